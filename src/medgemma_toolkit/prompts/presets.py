"""MedGemma's prompt conventions as named, versioned data.

Each preset turns (question, media parts, optional system prompt and history) into a `Prompt`. Sources: the v1
model cards' quick-start (system prompt chosen by modality, text before the image), the MedGemma 1.5 model card
(no system prompt, image before text, long answers), Google's CT and pathology notebooks (for a CT/MR volume or a
slide's patches: the instruction text, then each image with its "SLICE n" label, then the question), and completion
prompts for pretrained (`-pt`, base) checkpoints, which have no chat turns and need stop strings.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from ..core.messages import IMAGE_PLACEHOLDER, ImagePart, Message, Part, Prompt, TextPart
from ..errors import BadInput, lookup
from .thinking import THINK_INSTRUCTION

# Google's notebooks at google-health/medgemma commit 80a1de1e1a306a24b69b7af4009f326bd6bae644 ("Fix notebook
# formatting", 2026-01-13). The wording is the protocol the model was tuned to, so it is kept verbatim here.
LOCALIZE_SOURCE = (
    "google-health/medgemma@80a1de1e1a306a24b69b7af4009f326bd6bae644 "
    "notebooks/cxr_anatomy_localization_with_hugging_face.ipynb"
)
LOCALIZE_TEMPLATE = (
    "Instructions:\n"
    "The following user query will require outputting bounding boxes. The format of bounding boxes coordinates is "
    "[y0, x0, y1, x1] where (y0, x0) must be top-left corner and (y1, x1) the bottom-right corner. This implies "
    "that x0 < x1 and y0 < y1. Always normalize the x and y coordinates the range [0, 1000], meaning that a "
    "bounding box starting at 15% of the image width would be associated with an x coordinate of 150. You MUST "
    "output a single parseable json list of objects enclosed into ```json...``` brackets, for instance "
    '```json[{"box_2d": [800, 3, 840, 471], "label": "car"}, {"box_2d": [400, 22, 600, 73], "label": "dog"}]``` '
    "is a valid output. Now answer to the user query.\n"
    "\n"
    'Remember "left" refers to the patient\'s left side where the heart is and sometimes underneath an L in the '
    "upper right corner of the image.\n"
    "\n"
    "Query:\n"
    "Where is the {question}? Don't give a final answer without reasoning. Output the final answer in the format "
    '"Final Answer: X" where X is a JSON list of objects. The object needs a "box_2d" and "label" key. Answer:'
)
LONGITUDINAL = "cxr-longitudinal"  # the preset's name: prior image, current image, then the instruction
LONGITUDINAL_SOURCE = (
    "google-health/medgemma@80a1de1e1a306a24b69b7af4009f326bd6bae644 "
    "notebooks/cxr_longitudinal_comparison_with_hugging_face.ipynb"
)
LONGITUDINAL_PAD_SOURCE = (
    "google-health/medgemma@80a1de1e1a306a24b69b7af4009f326bd6bae644 (unchanged through a60a660) "
    "notebooks/cxr_longitudinal_comparison_with_hugging_face.ipynb: preprocess_image = False"
)
LONGITUDINAL_INSTRUCTION = (
    "Provide a comparison of these two images and include details from\n"
    "the image which students should take note of when reading longitudinal CXR\n"
)


@dataclass(frozen=True)
class PromptPreset:
    name: str
    version: str
    description: str
    mode: Literal["chat", "completion"] = "chat"
    system_text: str | None = None  # used when the prompt has no image
    system_image: str | None = None  # used when it has at least one
    image_first: bool = False
    max_new_tokens_text: int = 500
    max_new_tokens_image: int = 300
    max_new_tokens_think: int = 1300  # thinking needs room before the answer
    stop: tuple[str, ...] = ()
    completion_template: str = "{media}{question}"
    # Volumes and slides (media with slice labels, or several patches of one slide): instruction, media, question,
    # as Google's CT and pathology notebooks lay them out. The question is set off by a blank line, as there.
    volume_layout: bool = False
    volume_instruction: str = ""  # used when the caller gives none (CT/MR slices)
    slide_instruction: str = ""  # the same for a slide's patches
    # The user's text is put into this template at "{question}" (a task preset whose wording is the protocol,
    # e.g. Google's localisation instruction block around the object's name); an empty question becomes
    # `default_question` (e.g. the longitudinal notebook's instruction).
    question_template: str = "{question}"
    default_question: str = ""
    # 2D images padded to a centred square before resizing (the training preprocessing), or sent as they are and
    # stretched by the image processor (Google's longitudinal notebook: `preprocess_image = False`). A request's
    # own `ImageOptions.pad` wins.
    pad_images: bool = True
    references: tuple[str, ...] = field(default_factory=tuple)

    def user_text(self, question: str) -> str:
        """The user's text as this preset sends it: the template filled, or the default for an empty question."""
        if not question.strip():
            return self.default_question or question
        return self.question_template.replace("{question}", question)

    def max_new_tokens(self, has_images: bool, think: bool) -> int:
        if think:
            return self.max_new_tokens_think
        return self.max_new_tokens_image if has_images else self.max_new_tokens_text

    def build(
        self,
        question: str,
        media: list[Part] | None = None,
        system: str | None = None,
        think: bool = False,
        history: list[Message] | None = None,
        instruction: str | None = None,
    ) -> Prompt:
        """Build the prompt for one user turn. `media` comes from `imaging.load_parts` (images and their labels).

        `instruction` is text placed before a volume's or slide's images (presets with `volume_layout`); elsewhere
        it is placed before the question.
        """
        media = list(media or [])
        has_images = any(isinstance(p, ImagePart) for p in media)
        question = self.user_text(question)
        if self.mode == "completion":
            if history:
                raise BadInput(f"preset {self.name!r} is for base models and has no multi-turn chat")
            images = [p.image for p in media if isinstance(p, ImagePart)]
            media_text = "".join(f"{IMAGE_PLACEHOLDER}\n" if isinstance(p, ImagePart) else f"{p.text}\n" for p in media)
            prefix = f"{system}\n\n" if system else ""
            return Prompt(
                text=prefix + self.completion_template.format(media=media_text, question=question), images=images
            )

        messages: list[Message] = []
        sys_text = system if system is not None else (self.system_image if has_images else self.system_text)
        if think:
            sys_text = f"{THINK_INSTRUCTION} {sys_text}" if sys_text else THINK_INSTRUCTION
        if sys_text and not history:
            messages.append(Message("system", [TextPart(sys_text)]))
        messages.extend(history or [])
        text_part: list[Part] = [TextPart(question)] if question else []
        if self.volume_layout and is_volume(media):
            slices = any(isinstance(p, TextPart) and p.text.startswith("SLICE ") for p in media)
            own = self.volume_instruction if slices else self.slide_instruction
            head = instruction if instruction is not None else own
            tail: list[Part] = [TextPart(question if question[:1].isspace() else f"\n\n{question}")] if question else []
            parts = ([TextPart(head)] if head else []) + media + tail
        else:
            if instruction:
                text_part = [TextPart(instruction), *text_part]
            parts = media + text_part if self.image_first else text_part + media
        if not parts:
            raise BadInput("empty prompt: give a question or an image")
        messages.append(Message("user", parts))
        return Prompt(messages=messages)


def is_volume(media: list[Part]) -> bool:
    """A CT/MR volume (images labelled "SLICE n") or a slide's patches: the notebooks' instruction-first layout."""
    if any(isinstance(p, TextPart) and p.text.startswith("SLICE ") for p in media):
        return True
    return any(isinstance(p, ImagePart) and (p.info or {}).get("patch") is not None for p in media)


PRESETS: dict[str, PromptPreset] = {
    p.name: p
    for p in [
        PromptPreset(
            name="medgemma-v1",
            version="2",
            description="MedGemma v1 quick-start: expert-radiologist / medical-assistant system prompt, text then image",
            system_text="You are a helpful medical assistant.",
            system_image="You are an expert radiologist.",
            image_first=False,
            max_new_tokens_text=500,
            max_new_tokens_image=300,
            max_new_tokens_think=1500,  # the quick-start's budget for thinking text prompts
            references=(
                "google/medgemma-4b-it model card",
                "google/medgemma-27b-text-it model card",
                "google-health/medgemma notebooks/quick_start_with_hugging_face.ipynb",
            ),
        ),
        PromptPreset(
            name="medgemma-1.5",
            version="2",
            description="MedGemma 1.5 model card: no system prompt, image(s) before text, long answers; CT/MR volumes "
            "and slides as in Google's notebooks: instruction, images each with 'SLICE n', then the question",
            image_first=True,
            max_new_tokens_text=2000,
            max_new_tokens_image=2000,
            max_new_tokens_think=2000,
            volume_layout=True,
            volume_instruction="Please review the slices provided below carefully.",  # the CT notebook's last sentence
            slide_instruction="Please review the patches provided below carefully.",  # ours, in the same form
            references=(
                "google/medgemma-1.5-4b-it model card",
                "google-health/medgemma notebooks/high_dimensional_ct_hugging_face.ipynb",
            ),
        ),
        PromptPreset(
            name="pretrained",
            version="1",
            description="Completion prompt for pretrained/base checkpoints: 'Question: ...\\nAnswer:' with stop strings",
            mode="completion",
            max_new_tokens_text=64,
            max_new_tokens_image=128,
            max_new_tokens_think=128,
            stop=("\nQuestion:", "\n\n"),
            completion_template="{media}Question: {question}\nAnswer:",
            references=("google/medgemma-4b-pt model card",),
        ),
        PromptPreset(
            name="completion",
            version="1",
            description="Raw text continuation for base models: the text as given, stopping at a blank line",
            mode="completion",
            max_new_tokens_text=64,
            max_new_tokens_image=128,
            max_new_tokens_think=128,
            stop=("\n\n",),
            completion_template="{media}{question}",
        ),
        PromptPreset(
            name="finetune-notebook",
            version="1",
            description="Google's fine-tuning notebook's messages: no system prompt, image(s) then the question",
            image_first=True,
            references=("google-health/medgemma notebooks/fine_tune_with_hugging_face.ipynb",),
        ),
        PromptPreset(
            name="cxr-localize",
            version="1",
            description="Google's CXR anatomy-localisation notebook: no system prompt, the padded image, then its "
            "instruction block (boxes [y0, x0, y1, x1] in 0-1000, a ```json list, the patient's-left reminder) "
            "around the object's name; greedy, 1000 new tokens",
            image_first=True,
            max_new_tokens_text=1000,
            max_new_tokens_image=1000,
            max_new_tokens_think=2000,
            question_template=LOCALIZE_TEMPLATE,
            references=(LOCALIZE_SOURCE,),
        ),
        PromptPreset(
            name=LONGITUDINAL,
            version="2",  # 2: images unpadded (stretched by the processor), as the notebook sends them
            description="Google's CXR longitudinal-comparison notebook: no system prompt, the prior image, the "
            "current image, then the instruction (the notebook's when none is given); the images unpadded "
            "(preprocess_image = False; padding with --pad); greedy, 600 new tokens",
            image_first=True,
            max_new_tokens_text=600,
            max_new_tokens_image=600,
            max_new_tokens_think=2000,
            default_question=LONGITUDINAL_INSTRUCTION,
            pad_images=False,
            references=(LONGITUDINAL_SOURCE, LONGITUDINAL_PAD_SOURCE),
        ),
        PromptPreset(
            name="plain",
            version="1",
            description="No system prompt, the user's turn exactly as given (text, then images); greedy",
            max_new_tokens_text=512,
            max_new_tokens_image=512,
        ),
    ]
}


def get_preset(name: str) -> PromptPreset:
    return lookup(PRESETS, name, "prompt preset")

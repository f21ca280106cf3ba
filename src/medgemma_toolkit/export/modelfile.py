"""An Ollama `Modelfile` beside the exported GGUFs, so `ollama create NAME -f Modelfile` keeps vision.

Two `FROM` lines (model, then projector) is how Ollama imports a Gemma 3 model with its separate mmproj. The
template is Gemma 3's turn format; greedy decoding and `<end_of_turn>` as stop follow MedGemma's model cards.
"""

from __future__ import annotations

from pathlib import Path

_TEMPLATE = (
    "{{- range $i, $_ := .Messages }}\n"
    "{{- $last := eq (len (slice $.Messages $i)) 1 }}\n"
    '{{- if or (eq .Role "user") (eq .Role "system") }}<start_of_turn>user\n'
    "{{ .Content }}<end_of_turn>\n"
    "{{ if $last }}<start_of_turn>model\n"
    "{{ end }}\n"
    '{{- else if eq .Role "assistant" }}<start_of_turn>model\n'
    "{{ .Content }}{{ if not $last }}<end_of_turn>\n"
    "{{ end }}\n"
    "{{- end }}\n"
    "{{- end }}"
)


def modelfile_text(model: Path, mmproj: Path | None) -> str:
    lines = [f"FROM ./{model.name}"]
    if mmproj is not None:
        lines.append(f"FROM ./{mmproj.name}")
    lines += [
        f'TEMPLATE """{_TEMPLATE}"""',
        "PARAMETER stop <end_of_turn>",
        "PARAMETER temperature 0",
        "PARAMETER num_ctx 8192",
    ]
    return "\n".join(lines) + "\n"


def write_modelfile(out_dir: Path, model: Path, mmproj: Path | None) -> Path:
    path = out_dir / "Modelfile"
    path.write_text(modelfile_text(model, mmproj))
    return path

"""An answer as a Comprehensive SR: the question, the answer text, the images it rests on, who produced it.

Content tree (root: "Diagnostic imaging report", LOINC 18748-4):

- HAS OBS CONTEXT: the device observer standing for the model (TID 1002/1004)
- HAS CONCEPT MOD: TID 4019 Algorithm Identification (model, weights fingerprint, variant, preset@version, toolkit)
- CONTAINS Request (TEXT): the question
- CONTAINS Finding (TEXT): the answer, thought excluded unless asked for
  - INFERRED FROM Source of Measurement (IMAGE): one per instance the model saw, in the order it saw them
- CONTAINS Comment (TEXT): "AI generated, not reviewed ..."

The header lists the same instances as evidence (Current Requested Procedure Evidence Sequence).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .algorithm import AlgorithmInfo
from .document import clip_text, marker_text, quiet_highdicom, sop_arguments

if TYPE_CHECKING:
    from ..api import Answer

TITLE = ("18748-4", "LN", "Diagnostic imaging report")


def answer_report(
    question: str,
    answer: str,
    evidence: Sequence[Any],
    algo: AlgorithmInfo,
    thought: str | None = None,
) -> Any:
    """A Comprehensive SR over `evidence` (the DICOM headers of every instance the model saw, in order)."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    items: list[Any] = []
    items.extend(algo.observer())
    items.extend(algo.template())
    items.extend(qa_items(question, answer, evidence))
    rel = hd.sr.RelationshipTypeValues
    if thought:
        items.append(
            hd.sr.TextContentItem(
                name=codes.DCM.Comment, value=clip_text(f"Model's thought: {thought}"), relationship_type=rel.CONTAINS
            )
        )
    items.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value=marker_text(algo), relationship_type=rel.CONTAINS))
    root = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept(*TITLE))
    root.ContentSequence = hd.sr.ContentSequence(items)
    with quiet_highdicom():
        return hd.sr.ComprehensiveSR(content=root, **sop_arguments(algo, evidence, "Answer"))


def qa_items(question: str, answer: str, evidence: Sequence[Any]) -> list[Any]:
    """Request (the question) and Finding (the answer), the Finding INFERRED FROM each instance in `evidence`."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    rel = hd.sr.RelationshipTypeValues
    images = [
        hd.sr.ImageContentItem(
            name=codes.DCM.SourceOfMeasurement,
            referenced_sop_class_uid=ds.SOPClassUID,
            referenced_sop_instance_uid=ds.SOPInstanceUID,
            relationship_type=rel.INFERRED_FROM,
        )
        for ds in evidence
    ]
    finding = hd.sr.TextContentItem(
        name=codes.DCM.Finding, value=clip_text(answer, "(no answer)"), relationship_type=rel.CONTAINS
    )
    finding.ContentSequence = hd.sr.ContentSequence(images)
    request = hd.sr.TextContentItem(
        name=codes.DCM.Request, value=clip_text(question, "(no question)"), relationship_type=rel.CONTAINS
    )
    return [request, finding]


def study_report(answers: Sequence[tuple[str, str, Sequence[Any]]], algo: AlgorithmInfo) -> Any:
    """Several answers about one study (`batch --sr`) as one Comprehensive SR: a Request/Finding pair per
    (question, answer, evidence), in order; the header lists every instance cited once."""
    import highdicom as hd
    from pydicom.sr.codedict import codes

    rel = hd.sr.RelationshipTypeValues
    items: list[Any] = [*algo.observer(), *algo.template()]
    evidence: dict[str, Any] = {}
    for question, answer, cited in answers:
        items.extend(qa_items(question, answer, cited))
        for ds in cited:
            evidence.setdefault(str(ds.SOPInstanceUID), ds)
    items.append(hd.sr.TextContentItem(name=codes.DCM.Comment, value=marker_text(algo), relationship_type=rel.CONTAINS))
    root = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept(*TITLE))
    root.ContentSequence = hd.sr.ContentSequence(items)
    # highdicom files the SR in the study of the last instance given (`home_first`): the group's own study, which
    # is the study of every answer's last image (a comparison's current)
    home = str(answers[-1][2][-1].SOPInstanceUID)
    cited = [ds for uid, ds in evidence.items() if uid != home] + [evidence[home]]
    with quiet_highdicom():
        return hd.sr.ComprehensiveSR(content=root, **sop_arguments(algo, cited, "Answers"))


def sr_from_answer(
    question: str, answer: Answer, evidence: Sequence[Any], algo: AlgorithmInfo, include_thought: bool = False
) -> Any:
    """The Python API's entry: an `Answer` (from `MedGemma.ask`/`stream`) as a Comprehensive SR.

    >>> from medgemma_toolkit.imaging.manifest import prompt_manifest
    >>> from medgemma_toolkit.sr import algorithm_of, evidence_for, sr_from_answer, write_sr
    >>> evidence = evidence_for(prompt_manifest(mg.request("Any nodule?", ["ct_series/"]).prompt))
    >>> ans = mg.ask("Any nodule?", ["ct_series/"])
    >>> write_sr(sr_from_answer("Any nodule?", ans, evidence, algorithm_of(mg)), "sr.dcm")
    """
    return answer_report(question, answer.text, evidence, algo, answer.thought if include_thought else None)

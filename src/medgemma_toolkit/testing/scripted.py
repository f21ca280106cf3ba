"""A checkpoint of the real architecture whose greedy output is a chosen text, for end-to-end tests of parsing.

How: attention and MLP outputs are zeroed, so the last hidden state depends only on the current token; each token of
the script gets its own embedding direction, and an untied LM head maps that direction to the next token of the
script. Everything else (tokenizer, chat template, processor, generate, decoding of special tokens) is the real path.
"""

from __future__ import annotations

from pathlib import Path


def script_pieces(script: str, size: int = 6) -> list[str]:
    """`script` cut into distinct pieces of about `size` characters (a piece that would repeat an earlier one grows
    until it does not), so that any text, repeated characters included, can be one chain of unique tokens."""
    pieces: list[str] = []
    i = 0
    while i < len(script):
        j = min(len(script), i + size)
        while script[i:j] in pieces and j < len(script):
            j += 1
        if script[i:j] in pieces:  # the tail repeats an earlier piece: join it to the previous one
            pieces[-1] += script[i:j]
        else:
            pieces.append(script[i:j])
        i = j
    return pieces


def build_scripted_checkpoint(
    src_dir: str | Path,
    out_dir: str | Path,
    script: str,
    prompt_suffix: str | None = None,
    added_tokens: bool = False,
) -> Path:
    """Copy the tiny checkpoint at `src_dir` into `out_dir`, rewired so that any chat prompt yields `script`.

    `prompt_suffix` is the text every prompt ends with (default: the Gemma 3 generation prompt "<start_of_turn>model\\n").
    The script's tokens must all differ from each other and from the prompt's last token, unless `added_tokens`:
    then the script is cut into distinct pieces (`script_pieces`), each added to the vocabulary as one ordinary
    token, so texts with repeated characters (JSON, function calls) can be scripted too; they still decode and
    stream through the real tokenizer.
    """
    import shutil

    import torch
    from tokenizers import AddedToken
    from transformers import AutoConfig, AutoModelForImageTextToText, AutoTokenizer

    src, out = Path(src_dir), Path(out_dir)
    tok = AutoTokenizer.from_pretrained(src)
    suffix_ids = tok.encode(prompt_suffix or "<start_of_turn>model\n", add_special_tokens=False)
    if added_tokens:
        pieces = script_pieces(script)
        tok.add_tokens([AddedToken(p, normalized=False, special=False) for p in pieces])
        script_ids = [tok.convert_tokens_to_ids(p) for p in pieces]
    else:
        script_ids = tok.encode(script, add_special_tokens=False)
    chain = [suffix_ids[-1]] + script_ids + [tok.convert_tokens_to_ids("<end_of_turn>")]
    if len(set(chain)) != len(chain):
        raise ValueError("script tokens must be unique (and differ from the prompt's last token)")
    config = AutoConfig.from_pretrained(src)
    config.tie_word_embeddings = False
    config.text_config.tie_word_embeddings = False
    model = AutoModelForImageTextToText.from_pretrained(src, config=config)
    if added_tokens:
        model.resize_token_embeddings(len(tok))
    d = config.text_config.hidden_size
    if len(chain) > d:
        raise ValueError(f"script too long for hidden size {d}")
    lm = model.model.language_model
    with torch.no_grad():
        for layer in lm.layers:
            layer.self_attn.o_proj.weight.zero_()
            layer.mlp.down_proj.weight.zero_()
        lm.norm.weight.zero_()
        emb = lm.embed_tokens.weight
        head = torch.zeros(emb.shape[0], d)
        for i, t in enumerate(chain):
            emb[t] = 0.0
            emb[t, i] = 1.0
            if i + 1 < len(chain):
                head[chain[i + 1], i] = 10.0
        model.lm_head.weight.copy_(head)
    out.mkdir(parents=True, exist_ok=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.startswith("model") and f.name != "config.json":
            shutil.copy2(f, out / f.name)
    if added_tokens:
        tok.save_pretrained(out)  # the vocabulary with the script's pieces (the processor reads it from here)
    model.save_pretrained(out)
    return out

"""Tests for moe/export/hf_model.py and hf_tokenizer.py: an exported ByteLM is the same model under transformers."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("transformers")

from transformers import AutoModelForCausalLM, AutoTokenizer, pipeline  # noqa: E402

from moe.export.hf_model import export_model  # noqa: E402
from moe.model.tokenizer import EOS, decode  # noqa: E402
from moe.model.transformer import ByteLM, ModelConfig  # noqa: E402

DENSE = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64)
MOE = ModelConfig(d_model=32, n_layers=2, n_heads=2, d_ff=64, max_seq_len=64, moe_experts=4, moe_top_k=2)
TEXT = "To be, or not to be: héllo wörld! سلام دنیا 🙂\n"
MAX_DIFF = 1e-4


def trained(cfg: ModelConfig, seed: int = 0, steps: int = 25) -> ByteLM:
    """A model with non-unit norm weights, trained a few steps on TEXT so its greedy continuations mean something."""
    torch.manual_seed(seed)
    model = ByteLM(cfg)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.mul_(1 + 0.3 * torch.randn_like(p))
    data = torch.tensor(list((TEXT * 8).encode()))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(steps):
        starts = torch.randint(0, len(data) - 33, (4,))
        batch = torch.stack([data[s : s + 33] for s in starts.tolist()])  # (4, 33)
        logits = model(batch[:, :-1])
        torch.nn.functional.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def greedy(model: ByteLM, ids: list[int], max_new: int) -> list[int]:
    """Our own greedy decoding: append the argmax byte until `max_new` or EOS, as generate() does."""
    ids = list(ids)
    with torch.no_grad():
        for _ in range(max_new):
            nxt = int(model(torch.tensor([ids]))[0, -1].argmax())
            ids.append(nxt)
            if nxt == EOS:
                break
    return ids


@pytest.fixture(scope="module", params=["dense", "moe"])
def exported(request, tmp_path_factory):
    """(our model, its export directory) for a tiny dense and a tiny MoE ByteLM."""
    model = trained(DENSE if request.param == "dense" else MOE)
    return model, export_model(model, tmp_path_factory.mktemp(request.param))


def test_export_loads_as_llama_or_mixtral_with_our_settings(exported):
    """The export loads offline as LlamaForCausalLM (dense) or MixtralForCausalLM (MoE) with tied fp32 weights."""
    model, out = exported
    hf = AutoModelForCausalLM.from_pretrained(out)
    cfg = model.config
    expected = "MixtralForCausalLM" if cfg.moe_experts else "LlamaForCausalLM"
    assert type(hf).__name__ == expected
    assert hf.lm_head.weight.data_ptr() == hf.model.embed_tokens.weight.data_ptr()
    assert hf.dtype == torch.float32 and hf.num_parameters() == model.num_params()
    c = hf.config
    assert (c.bos_token_id, c.eos_token_id, c.pad_token_id) == (256, 257, 258)
    assert c.max_position_embeddings == cfg.max_seq_len and c.rms_norm_eps == cfg.norm_eps
    assert c.rope_parameters["rope_theta"] == cfg.rope_theta and c.num_key_value_heads == cfg.n_heads
    if cfg.moe_experts:
        assert (c.num_local_experts, c.num_experts_per_tok) == (cfg.moe_experts, cfg.moe_top_k)
        assert c.router_aux_loss_coef == cfg.moe_balance_coef and not c.output_router_logits


def test_logits_match_ours(exported):
    """On random bytes the transformers model's logits equal ByteLM's within 1e-4."""
    model, out = exported
    hf = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    x = torch.randint(0, 260, (3, model.config.max_seq_len), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        diff = (hf(x).logits - model(x)).abs().max().item()
    assert diff <= MAX_DIFF


def test_greedy_generate_matches_our_greedy_loop(exported):
    """generate() with greedy decoding and a KV cache picks the same 20 bytes as our full-recompute greedy loop."""
    model, out = exported
    hf = AutoModelForCausalLM.from_pretrained(out).eval()
    prompt = list(b"To be, or ")
    ours = greedy(model, prompt, 20)
    theirs = hf.generate(torch.tensor([prompt]), attention_mask=torch.ones(1, len(prompt)), max_new_tokens=20)
    assert theirs[0].tolist() == ours and len(ours) > len(prompt)


@pytest.mark.parametrize("text", ["héllo", "سلام دنیا", "emoji 🙂👍🏽", "tab\tnul\x00 end\n", "literal </s><pad>", ""])
def test_tokenizer_round_trips_utf8(exported, text):
    """AutoTokenizer encodes text as its UTF-8 bytes (no BOS/EOS added) and decodes them back to the same text."""
    tok = AutoTokenizer.from_pretrained(exported[1])
    ids = tok(text)["input_ids"]
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text


def test_tokenizer_decodes_like_ours_on_arbitrary_bytes(exported):
    """On any ids (broken UTF-8, specials) decode with skip_special_tokens equals moe.model.tokenizer.decode."""
    tok = AutoTokenizer.from_pretrained(exported[1])
    g = torch.Generator().manual_seed(0)
    cases = [[0xC3], [0xF0, 0x9F, 0x99], [104, 0xFF, 105], [0xE2, 0x82, 0x41], [104, 256, 257, 258, 259, 105]]
    cases += [torch.randint(0, 260, (50,), generator=g).tolist() for _ in range(20)]
    for ids in cases:
        assert tok.decode(ids, skip_special_tokens=True) == decode(ids), ids
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id, len(tok)) == (256, 257, 258, 260)


def test_tokenizer_truncates_to_the_context_keeping_the_end(exported):
    """With truncation a long prompt keeps its last max_seq_len bytes, the ones a continuation depends on."""
    model, out = exported
    tok = AutoTokenizer.from_pretrained(out)
    text = "".join(chr(ord("a") + i % 26) for i in range(100))
    ids = tok(text, truncation=True)["input_ids"]
    assert ids == list(text.encode())[-model.config.max_seq_len :]


def test_text_generation_pipeline_continues_the_prompt(exported):
    """pipeline("text-generation") loads the directory alone and returns the prompt plus our greedy continuation."""
    model, out = exported
    prompt = "héllo "
    result = pipeline("text-generation", model=str(out))(prompt, max_new_tokens=12, do_sample=False)
    ids = list(prompt.encode())
    assert result[0]["generated_text"] == prompt + decode(greedy(model, ids, 12)[len(ids) :])

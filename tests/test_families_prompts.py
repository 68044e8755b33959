"""Prompts encoded with the pipeline's own tokenizers and text encoders (tiny CLIP tokenizer
files and text encoders written here): the field of ``prompt=`` equals the field of the
conditions the pipeline's own ``encode_prompt`` gives, guidance's null condition included; the
error without transformers names the extra."""

from __future__ import annotations

import json
import sys

import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from test_families_unet import SDXL, _vae  # noqa: E402

from wgfm.interop import load_diffusers  # noqa: E402
from wgfm.processes import ShiftedInterpolant  # noqa: E402

# The text encoders' common sizes (their widths differ: each is its denoiser's).
TINY_TEXT = dict(intermediate_size=8, num_hidden_layers=2, num_attention_heads=2)


@pytest.fixture(scope="module")
def sdxl_text(tmp_path_factory):
    root = tmp_path_factory.mktemp("sdxl_text")
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in "abcdefghijklmnopqrstuvwxyz":
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    (root / "v.json").write_text(json.dumps(vocab))
    (root / "m.txt").write_text("#version: 0.2\n")  # no merges: one token per letter
    tok = transformers.CLIPTokenizer(str(root / "v.json"), str(root / "m.txt"), model_max_length=16)
    torch.manual_seed(0)
    # Hidden 4 per encoder: the two concatenated are the UNet's cross_attention_dim 8.
    cfg = transformers.CLIPTextConfig(
        **TINY_TEXT,
        vocab_size=len(vocab),
        hidden_size=4,
        max_position_embeddings=16,
        projection_dim=8,
    )
    pipe = diffusers.StableDiffusionXLPipeline(
        vae=_vae(),
        text_encoder=transformers.CLIPTextModel(cfg),
        text_encoder_2=transformers.CLIPTextModelWithProjection(cfg),
        tokenizer=tok,
        tokenizer_2=tok,
        unet=diffusers.UNet2DConditionModel(**SDXL),
        scheduler=diffusers.EulerDiscreteScheduler(),
    )
    pipe.save_pretrained(root / "pipe")
    return pipe, root / "pipe"


def test_prompt_is_the_pipelines_encode_prompt(sdxl_text):
    pipe, root = sdxl_text
    field, _ = load_diffusers(root, prompt="a cat", guidance_scale=5.0)
    assert "prompt 'a cat', the pipeline's default null" in " ".join(field.notes)
    with torch.no_grad():
        pe, npe, pooled, npooled = pipe.encode_prompt(
            "a cat", device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=True
        )
    c = {"encoder_hidden_states": pe[0].numpy(), "text_embeds": pooled[0].numpy()}
    n = {"encoder_hidden_states": npe[0].numpy(), "text_embeds": npooled[0].numpy()}
    assert not np.any(n["text_embeds"])  # SDXL's force_zeros_for_empty_prompt
    ref, _ = load_diffusers(root, condition=c, negative_condition=n, guidance_scale=5.0)
    x = jnp.asarray(np.random.default_rng(0).standard_normal((8, 8, 4)), jnp.float32)
    # The same numbers through the same module: equal up to float32 summation order.
    np.testing.assert_allclose(field(x, 0.4), ref(x, 0.4), rtol=1e-6, atol=1e-6)
    other, _ = load_diffusers(root, prompt="a dog", guidance_scale=5.0)
    assert np.abs(np.asarray(other(x, 0.4)) - np.asarray(ref(x, 0.4))).max() > 1e-4


def test_prompt_errors(sdxl_text, monkeypatch):
    _, root = sdxl_text
    with pytest.raises(ValueError, match="`prompt` and `condition` both give encoder_hidden"):
        load_diffusers(root, prompt="a", condition={"encoder_hidden_states": np.zeros((2, 8))})
    with pytest.raises(ValueError, match="`negative_prompt` applies only with `prompt`"):
        load_diffusers(root, negative_prompt="b")
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(ValueError, match=r"install wgfm\[text\] \(transformers\)"):
        load_diffusers(root, prompt="a cat")


LETTERS = "abcdefghijklmnopqrstuvwxyz"


def _t5(root):
    """A T5 tokenizer (unigram over single letters) and a T5 encoder of width 8 (PIXART's
    caption_channels)."""
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("\u2581", -2.0)]
    tok = transformers.T5Tokenizer(vocab=pieces + [(c, -3.0) for c in LETTERS], extra_ids=0)
    cfg = transformers.T5Config(
        vocab_size=len(tok), d_model=8, d_kv=4, d_ff=16, num_layers=1, num_heads=2
    )
    return tok, transformers.T5EncoderModel(cfg).eval()  # no dropout, as from_pretrained


def _gemma(root):
    """A Gemma tokenizer (single-letter BPE, no merges) and a Gemma 2 model of width 8."""
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3, "<mask>": 4, "\u2581": 5}
    vocab.update({c: 6 + i for i, c in enumerate(LETTERS)})
    tok = transformers.GemmaTokenizer(vocab=vocab, merges=[])
    cfg = transformers.Gemma2Config(
        **TINY_TEXT, vocab_size=len(vocab), hidden_size=8, num_key_value_heads=1, head_dim=4
    )
    return tok, transformers.Gemma2Model(cfg).eval()


@pytest.mark.parametrize("family", ["pixart", "sana"])
def test_caption_prompt_and_mask_are_the_pipelines(family, tmp_path):
    """PixArt (T5, 120 tokens, clean_caption as the pipeline's call) and Sana (Gemma, the
    pipeline's complex human instruction, 300 tokens): the prompt's field is the guided
    transformer call with the pipeline's own caption embeddings and attention masks."""
    from test_families_transformers import PIXART, SANA, _dc
    from test_interop_pipelines import _check_against

    torch.manual_seed(0)
    if family == "pixart":
        tok, enc = _t5(tmp_path)
        tr = diffusers.PixArtTransformer2DModel(**PIXART).eval()
        parts = dict(vae=_vae(), scheduler=diffusers.DPMSolverMultistepScheduler())
        pipe = diffusers.PixArtAlphaPipeline(
            tokenizer=tok, text_encoder=enc, transformer=tr, **parts
        )
        call = {"clean_caption": True}  # the pipeline's call default (dropped without bs4, ftfy)
        added = {"resolution": torch.tensor([[16.0, 16.0]]), "aspect_ratio": torch.tensor([[1.0]])}
    else:
        tok, enc = _gemma(tmp_path)
        tr = diffusers.SanaTransformer2DModel(**SANA).eval()
        parts = dict(vae=_dc(), scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=3.0))
        pipe = diffusers.SanaPipeline(tokenizer=tok, text_encoder=enc, transformer=tr, **parts)
        params = __import__("inspect").signature(pipe.__call__).parameters
        call = {"complex_human_instruction": params["complex_human_instruction"].default}
        added = None
    pipe.save_pretrained(tmp_path / "pipe")
    field, _ = load_diffusers(
        tmp_path / "pipe", prompt="a cat", negative_prompt="ugly", guidance_scale=4.5
    )
    with torch.no_grad():
        pe, mask, npe, nmask = pipe.encode_prompt(
            "a cat", True, negative_prompt="ugly", device="cpu", **call
        )
    # Padded to the pipeline's length (120 PixArt-alpha, 300 Sana): the masks are not all ones.
    assert pe.shape[1] == (120 if family == "pixart" else 300) and 0 < mask.sum() < mask.numel()
    assert not torch.equal(mask, nmask)  # the two prompts' own masks, not one shared
    notes = " ".join(field.notes)
    assert "prompt 'a cat', negative prompt 'ugly' as the null condition" in notes
    k = 500

    def one(x, e, m):
        kw = {} if added is None else {"added_cond_kwargs": added}
        out = tr(x, e, timestep=torch.tensor([float(k)]), encoder_attention_mask=m, **kw)
        return out.sample[:, :4]

    if family == "pixart":
        t = (k + 1) / 1000

        def ref(x, t_):
            u = one(x, npe, nmask)
            return u + 4.5 * (one(x, pe, mask) - u)
    else:
        # Flow matching, shift 3: sigma 0.5 is the scheduler's timestep 500; the field is the
        # velocity in t, ds/dt times the network's.
        p = field.process
        assert isinstance(p, ShiftedInterpolant)
        t = float(p.time_of_sigma(0.5))
        ds = 3.0 / (1 + 2.0 * t) ** 2

        def ref(x, t_):
            u = one(x, npe, nmask)
            return ds * (u + 4.5 * (one(x, pe, mask) - u))

    _check_against(field, ref, (8, 8, 4), t)
    # The mask matters: attending to the padding too gives another field.
    c = {"encoder_hidden_states": pe[0].numpy()}
    n = {"encoder_hidden_states": npe[0].numpy()}
    unmasked, _ = load_diffusers(
        tmp_path / "pipe", condition=c, negative_condition=n, guidance_scale=4.5
    )
    x = jnp.asarray(np.random.default_rng(1).standard_normal((8, 8, 4)), jnp.float32)
    assert np.abs(np.asarray(unmasked(x, t)) - np.asarray(field(x, t))).max() > 1e-4

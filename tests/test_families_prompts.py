"""Prompts encoded with the pipeline's own tokenizers and text encoders (tiny CLIP tokenizer
files and text encoders written here): the field of ``prompt=`` equals the field of the
conditions the pipeline's own ``encode_prompt`` gives, guidance's null condition included; the
error without transformers names the extra."""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")
transformers = pytest.importorskip("transformers")

from test_families_unet import SDXL, _vae  # noqa: E402

from wgfm.interop import load_diffusers  # noqa: E402


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
        vocab_size=len(vocab),
        hidden_size=4,
        intermediate_size=8,
        num_hidden_layers=2,
        num_attention_heads=2,
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
    x = np.random.default_rng(0).standard_normal((8, 8, 4)).astype(np.float32)
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

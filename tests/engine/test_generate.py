"""atrous.engine.generate: greedy generation against the offline forward; metadata checks."""

import json

import pytest
import torch

from tiny_models import create_tiny

from atrous.data.sequence import mu_law_decode, mu_law_encode
from atrous.engine.generate import audio_checkpoint_meta, generate_audio


def test_greedy_clips_follow_the_offline_argmax():
    # Temperature 0 takes the most likely class: each id must be the argmax of the offline
    # forward over the ids before it (the first step is fed classes // 2, mu-law silence).
    torch.manual_seed(0)
    model = create_tiny("wavenet").eval()
    classes = model.config.classes
    audio = generate_audio(model, 12, count=2, temperature=0.0)
    assert audio.shape == (2, 12) and audio.abs().max() <= 1
    ids = mu_law_encode(audio, classes)
    torch.testing.assert_close(mu_law_decode(ids, classes), audio)  # decoded ids, nothing else
    fed = torch.cat([torch.full((2, 1), classes // 2), ids[:, :-1]], 1)
    with torch.no_grad():
        expected = model(fed).argmax(1)
    assert torch.equal(ids, expected)


def test_same_seed_same_clips_and_the_seed_matters():
    torch.manual_seed(0)
    model = create_tiny("wavenet").eval()
    first = generate_audio(model, 30, count=2, seed=3)
    assert torch.equal(first, generate_audio(model, 30, count=2, seed=3))
    assert not torch.equal(first, generate_audio(model, 30, count=2, seed=4))


def _checkpoint(tmp_path, meta):
    folder = tmp_path / "save"
    folder.mkdir()
    (folder / "checkpoint.json").write_text(json.dumps({"format": 1, "meta": meta}))
    return folder


@pytest.mark.parametrize("meta, field", [
    ({"num_classes": 3}, "segmentation checkpoint"),
    ({"task": "copy", "model": "tcn"}, "field 'meta.task' is 'copy'"),
    ({"task": "audio", "model": "tcn"}, "field 'meta.model' must be 'wavenet'"),
    ({"task": "audio", "model": "wavenet", "model_kwargs": [1]}, "field 'meta.model_kwargs'"),
    ({"task": "audio", "model": "wavenet", "sample_rate": 0}, "field 'meta.sample_rate'"),
])
def test_metadata_that_is_not_an_audio_wavenet_is_named(tmp_path, meta, field, monkeypatch):
    import atrous.engine.checkpoint as checkpoint

    folder = _checkpoint(tmp_path, meta)
    monkeypatch.setattr(checkpoint, "read_checkpoint_meta", lambda path: {"meta": meta})
    with pytest.raises(ValueError, match=field):
        audio_checkpoint_meta(folder)

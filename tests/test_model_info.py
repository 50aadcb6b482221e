"""What draftnet reads of a model file before loading it: a GGUF's metadata, read once and
kept for the file as it is."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from emu.errors import ConfigError
from emu.models import embedded
from emu.models.embedded import gguf_info


def _tiny_gguf(path: Path, *, layers: int = 2) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(layers)
    w.add_embedding_length(8)
    w.add_feed_forward_length(16)
    w.add_context_length(128)
    w.add_token_list(["a", "b", "c"])
    w.add_tensor("x", np.zeros(4, dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_metadata_is_read_once_and_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRAFTNET_HOME", str(tmp_path / "home"))
    model = _tiny_gguf(tmp_path / "tiny.gguf")
    info = gguf_info(model)
    assert (info.arch.layers, info.arch.hidden, info.arch.ffn) == (2, 8, 16)
    assert (info.vocab, info.context) == (3, 128)
    assert len(list((tmp_path / "home" / "gguf-info").glob("*.json"))) == 1

    # A new process (the in-process cache cleared) finds what was kept, and reads nothing.
    embedded._gguf_info.cache_clear()
    reads: list[Path] = []
    real = embedded._read_gguf_info
    monkeypatch.setattr(embedded, "_read_gguf_info", lambda p: reads.append(p) or real(p))
    assert gguf_info(model) == info and reads == []

    # The file changed: it is read again.
    _tiny_gguf(model, layers=3)
    os.utime(model, ns=(1, 1))
    assert gguf_info(model).arch.layers == 3 and reads == [model.resolve()]


def test_a_file_that_is_not_a_gguf_is_one_clear_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DRAFTNET_HOME", str(tmp_path / "home"))
    (tmp_path / "bad.gguf").write_bytes(b"not a gguf at all")
    with pytest.raises(ConfigError, match="is not a readable GGUF"):
        gguf_info(tmp_path / "bad.gguf")
    with pytest.raises(ConfigError, match="must be a readable GGUF file"):
        gguf_info(tmp_path / "missing.gguf")

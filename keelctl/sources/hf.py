"""A Hugging Face causal LM (a local transformers folder or hf:NAME[@REVISION]) as a model source.

transformers is the optional [hf] extra, imported here only. The decoder layers are found from
the module structure (layers.find_decoder_layers), so a family keelctl has never seen works if it
keeps its layers in one ModuleList, as every decoder-only transformers model does.
"""

from __future__ import annotations

import torch

from keelctl.errors import KeelError
from keelctl.sources.layers import HFModel, find_branches, find_decoder_layers

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Windows scored per model: the model's own maximum, capped (long contexts cost memory, not
# insight into depth); docs/ablate-layers.md.
MAX_CONTEXT = 2048


def _transformers():
    try:
        import transformers
    except ImportError:
        raise KeelError(
            "transformers is not installed; pip install 'keelctl[hf]' to analyse Hugging Face "
            "models"
        ) from None
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()  # one line per command, not per weight file
    return transformers


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


class HFSource:
    kind = "transformers"
    layer_unit = "block"

    def __init__(self, spec: str, name: str, revision: str | None, *, dtype: str, device_map):
        if dtype not in DTYPES:
            raise KeelError(f"unknown --dtype {dtype!r}; use {', '.join(DTYPES)}")
        if device_map not in (None, "auto"):
            raise KeelError(f"unknown --device-map {device_map!r}; use auto (or leave it out)")
        tf = _transformers()
        self.spec, self.name, self.revision = spec, name, revision
        self.dtype, self.device_map = DTYPES[dtype], device_map
        where = dict(revision=revision) if revision else {}
        try:
            self.config = tf.AutoConfig.from_pretrained(name, **where)
        except (OSError, ValueError) as e:
            raise KeelError(
                f"cannot load {spec} ({_first_line(e)}); check the name and revision, connect to "
                "the network (or unset HF_HUB_OFFLINE), log in for gated models, or download it "
                "first with `hf download NAME`"
            ) from None
        self.family = self.config.model_type
        self._check_causal(tf)
        with torch.device("meta"):  # the structure, without weights
            skeleton = tf.AutoModelForCausalLM.from_config(self.config)
        _, layers = find_decoder_layers(skeleton, spec)
        self.n_blocks = len(layers)
        self.n_sublayers = 2 * self.n_blocks
        self.has_branches = find_branches(layers[0]) is not None
        self.tokenizer = self._tokenizer(tf, where)
        positions = getattr(self.config, "max_position_embeddings", None) or getattr(
            self.config, "n_positions", MAX_CONTEXT
        )
        self.context = min(positions, MAX_CONTEXT)

    def _check_causal(self, tf) -> None:
        if getattr(self.config, "is_encoder_decoder", False):
            raise KeelError(
                f"{self.spec} is an encoder-decoder (seq2seq) model ({self.family}); keelctl "
                "analyses decoder-only causal LMs"
            )
        from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

        archs = getattr(self.config, "architectures", None) or []
        causal = [a for a in archs if a.endswith(("ForCausalLM", "LMHeadModel"))]
        if self.family not in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES or (archs and not causal):
            raise KeelError(
                f"{self.spec} is not a causal LM ({self.family}, {', '.join(archs) or 'no head'}):"
                " encoder-only models have no next-token logits; pass a decoder-only model"
            )

    def _tokenizer(self, tf, where: dict):
        from keelctl.data.tokenizers import PretrainedTokenizer

        try:
            hf_tok = tf.AutoTokenizer.from_pretrained(self.name, **where)
        except (OSError, ValueError, TypeError) as e:
            raise KeelError(
                f"cannot load the tokenizer of {self.spec} ({_first_line(e)}); the model folder "
                "needs its tokenizer files (tokenizer.json)"
            ) from None
        backend = getattr(hf_tok, "backend_tokenizer", None)
        # Documents start with BOS where the model has one (Llama), else EOS (GPT-2, Qwen),
        # as lm-eval's HFLM prefixes them.
        prefix = hf_tok.bos_token_id if hf_tok.bos_token_id is not None else hf_tok.eos_token_id
        if backend is None or prefix is None:
            missing = "BOS or EOS token" if backend else "tokenizer.json (fast tokenizer)"
            raise KeelError(
                f"the tokenizer of {self.spec} has no {missing}; keelctl needs a fast tokenizer "
                "with a BOS or EOS token"
            )
        self.hf_tokenizer = hf_tok
        return PretrainedTokenizer(backend, self.spec, eot_id=prefix)

    def data_config(self):
        return None

    def check_unit(self, unit: str) -> None:
        if unit == "sublayer" and not self.has_branches:
            raise KeelError(
                f"--unit sublayer: the layers of {self.spec} ({self.family}) have no separate "
                "attention and MLP modules to bypass; use --unit block"
            )

    def load(self, device: torch.device) -> HFModel:
        tf = _transformers()
        where = dict(revision=self.revision) if self.revision else {}
        if self.device_map == "auto":
            try:
                import accelerate  # noqa: F401  (device_map needs it)
            except ImportError:
                raise KeelError(
                    "--device-map auto needs accelerate; pip install 'keelctl[hf]'"
                ) from None
            where["device_map"] = "auto"
        try:
            model = tf.AutoModelForCausalLM.from_pretrained(self.name, dtype=self.dtype, **where)
        except (OSError, ValueError) as e:
            raise KeelError(f"cannot load the weights of {self.spec} ({_first_line(e)})") from None
        if self.device_map is None:
            model = model.to(device)
        return HFModel(model.eval(), self.spec)

    def info(self) -> dict:
        return {"model_path": self.spec, "revision": self.revision, "config_hash": None}

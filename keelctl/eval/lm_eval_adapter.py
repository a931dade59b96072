"""The lm-evaluation-harness model `keel`: a keelctl run dir behind lm-eval's TemplateLM.

    lm_eval --model keel --model_args path=runs/tiny-keel --batch_size 8 --device cpu --tasks ...

Constructor args: path (run dir, required), device (cpu, cuda, cuda:N; default: CUDA if
present), batch_size (requests per forward, default 1), max_length (context in tokens; default
the context the run was trained at, its data.seq_len; longer inputs lose tokens on the left),
rolling_context (overlap of loglikelihood_rolling windows, default max_length // 2). The
lm_eval command always passes its own --batch_size and --device, so give those as flags there
and the rest in --model_args.
Importing this module registers the name; docs/eval.md says how the stock `lm_eval` command
gets it imported.
"""

from __future__ import annotations

import lm_eval.models  # noqa: F401  (fills the registry first: lm-eval only does so while empty)
import torch
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.models.utils import Collator, normalize_gen_kwargs
from tqdm import tqdm

from keelctl.errors import KeelError
from keelctl.eval.device import resolve_device
from keelctl.eval.perplexity import model_device, rolling_windows, score_sequences, score_windows
from keelctl.generate import GREEDY, Sampling, generate

# lm-eval's CLI passes device="cuda:0" when --device is not given; where there is no GPU that
# means "no choice made" (the harness's own HF model falls back to the CPU the same way).
HARNESS_DEFAULT_DEVICE = "cuda:0"
DEFAULT_MAX_GEN_TOKS = 256


def _positive_int(name: str, value) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = 0
    if number < 1 or str(number) != str(value).strip():
        raise KeelError(
            f"keel model arg {name}={value!r} must be a positive integer "
            "('auto' batch sizes are not supported)"
        )
    return number


@register_model("keel")
class KeelLM(TemplateLM):
    """A keelctl model for lm-eval: batched scoring, rolling windows, batched generation."""

    def __init__(
        self,
        path: str | None = None,
        device: str | None = None,
        batch_size: int | str = 1,
        max_length: int | str | None = None,
        rolling_context: int | str | None = None,
        max_batch_size: int | None = None,  # lm-eval passes it for 'auto' batch sizes only
        *,
        model=None,
        tokenizer=None,
    ):
        super().__init__()
        if model is None:
            if not path:
                raise KeelError("keel needs a run dir: --model_args path=RUN_DIR")
            if device == HARNESS_DEFAULT_DEVICE and not torch.cuda.is_available():
                device = "cpu"
            from keelctl.runs import Run
            from keelctl.sources.keel import trained_context

            run = Run(path)
            model, tokenizer = run.load_model(resolve_device(device))
            max_length = max_length or trained_context(run)
        elif tokenizer is None:
            raise KeelError("KeelLM(model=...) also needs tokenizer=...")
        self.model, self.tokenizer = model.eval(), tokenizer
        self._device = model_device(model)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.max_length = _positive_int("max_length", max_length or model.config.max_seq_len)
        self.rolling_context = (
            max(1, self.max_length // 2)
            if rolling_context is None
            else _positive_int("rolling_context", rolling_context)
        )

    @classmethod
    def from_model(cls, model, tokenizer, **kwargs) -> KeelLM:
        """Wrap an already loaded (model, tokenizer), e.g. from keelctl.runs.load_model."""
        return cls(model=model, tokenizer=tokenizer, **kwargs)

    # -- tokenizer ------------------------------------------------------------------------
    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eot_id

    def tok_encode(
        self, string: str, add_special_tokens: bool | None = None, **kwargs
    ) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens, **kwargs) -> str:
        return self.tokenizer.decode(tokens)

    def get_model_info(self) -> dict:
        from keelctl.runs import config_hash

        return {
            "model_config_hash": config_hash(self.model.config),
            "model_residual": self.model.config.residual,
        }

    # -- scoring --------------------------------------------------------------------------
    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        """(sum of log p(continuation | context), whether every continuation token is the
        argmax) per request; requests are sorted longest first and scored batch_size at a
        time with right padding, one forward per batch; context is cut from the left."""
        for _, _, cont in requests:
            if not 0 < len(cont) <= self.max_length:
                raise KeelError(
                    f"a continuation of {len(cont)} tokens does not fit the "
                    f"context of {self.max_length}; raise max_length"
                )
        collator = Collator(requests, sort_fn=lambda r: (-len(r[1] + r[2]), tuple(r[1] + r[2])))
        results = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="keel loglikelihood")
        for chunk in collator.get_batched(n=self.batch_size):
            seqs = [(ctx + cont)[-(self.max_length + 1) :] for _, ctx, cont in chunk]
            scored = score_sequences(
                self.model, seqs, [len(c) for _, _, c in chunk], pad_id=self.eot_token_id
            )
            for (key, _, _), (logp, greedy) in zip(chunk, scored, strict=True):
                answer = (logp.double().sum().item(), bool(greedy.all()))
                results.append(answer)
                if key is not None:
                    self.cache_hook.add_partial("loglikelihood", key, answer)
            bar.update(len(chunk))
        bar.close()
        return collator.get_original(results)

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        """Log-likelihood of whole texts, scored in rolling windows (each token once)."""
        results = []
        for req in tqdm(requests, disable=disable_tqdm, desc="keel loglikelihood_rolling"):
            (text,) = req.args
            windows = rolling_windows(
                self.tok_encode(text), self.eot_token_id, self.max_length, self.rolling_context
            )
            total = sum(
                score_windows(
                    self.model, windows, batch_size=self.batch_size, pad_id=self.eot_token_id
                )
            )
            results.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return results

    # -- generation -----------------------------------------------------------------------
    @staticmethod
    def _sampling(kwargs: dict) -> Sampling:
        if not kwargs["do_sample"]:
            return GREEDY
        top_k = kwargs.get("top_k")
        return Sampling(
            temperature=float(kwargs.get("temperature", 1.0)),
            top_k=int(top_k) if top_k else None,
            top_p=float(kwargs.get("top_p") or 1.0),
        )

    def _stop_at(self, until: list[str]):
        """stop(ids): whether the text of ids contains a stop string (None: no stop strings)."""
        if not until:
            return None
        return lambda ids: any(stop in self.tok_decode(ids) for stop in until)

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        """keelctl.generate's decode loop (KV cache), batch_size requests with the same
        generation settings at a time: until a stop string, end-of-text or max_gen_toks.
        Greedy unless the task asks for sampling (temperature, top_k, top_p; lm-eval's --seed
        seeds it). Contexts keep their last max_length tokens; past max_length the window
        slides (docs/generate.md)."""
        collator = Collator(
            [req.args for req in requests],
            sort_fn=lambda args: (-len(self.tok_encode(args[0])), args[0]),
            group_by="gen_kwargs",
            group_fn=lambda args: args[1],
        )
        results = []
        bar = tqdm(total=len(requests), disable=disable_tqdm, desc="keel generate_until")
        for chunk in collator.get_batched(n=self.batch_size):
            kwargs = normalize_gen_kwargs(chunk[0][1], DEFAULT_MAX_GEN_TOKS)
            until = [s for s in kwargs["until"] if s]
            rows = generate(
                self.model,
                [self.tok_encode(context) or [self.eot_token_id] for context, _ in chunk],
                max_new_tokens=kwargs["max_gen_toks"],
                context=self.max_length,
                eot_id=self.eot_token_id,
                sampling=self._sampling(kwargs),
                stop=self._stop_at(until),
            )
            for (context, gen_kwargs), ids in zip(chunk, rows, strict=True):
                text = self.tok_decode(ids)
                for stop in until:
                    text = text.split(stop)[0]
                results.append(text)
                self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
            bar.update(len(chunk))
        bar.close()
        return collator.get_original(results)

"""lm-evaluation-harness on a VSLM run: the `LM` adapter, registered as model "vslm".

    vslm eval runs/x --tasks hellaswag arc_easy --limit 200        # online: the harness downloads the tasks
    vslm eval runs/x --tasks my_task --include-path my_tasks/      # a YAML task over local files

or from Python, `lm_eval.simple_evaluate(model=VSLMHarnessLM("runs/x"), tasks=[...])`. Needs the
`harness` extra (`pip install 'vslm[harness]'`).

How the three request types are answered:
* loglikelihood(context, continuation): log p(continuation | context), summed over the
  continuation's tokens, and whether each is the greedy (argmax) token. The pair is encoded
  together and split where the context's own tokens end (a trailing space of the context moves to
  the continuation, as the harness's HF model does), so the tokens match those of the whole text.
* loglikelihood_rolling(text): log p(text), every token predicted once, after end-of-text, in
  consecutive windows of the model's context (the harness's "rolling" windows).
* generate_until(context, {until, max_gen_toks}): greedy decoding until a stop string, end-of-text
  or max_gen_toks tokens.
A context longer than the model's is cut from the left. A tokenizer without end-of-text (char, on a
single text) cannot predict a text's first token: it is taken as given.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vslm.data.sources import hub_unresolvable
from vslm.errors import UsageError, VSLMError, did_you_mean
from vslm.train.run_folder import load_run

try:
    from lm_eval.api.model import LM
    from lm_eval.api.registry import register_model
except ImportError:  # pragma: no cover - the message is what the user sees
    raise VSLMError("lm-evaluation-harness is not installed: pip install 'vslm[harness]' (or lm_eval)") from None


@register_model("vslm")
class VSLMHarnessLM(LM):
    def __init__(self, run: str, checkpoint: str | None = None, device: str = "cpu", batch_size: int | str = 1,
                 max_gen_toks: int = 128, **_):
        super().__init__()
        cfg, self.model, self.tokenizer = load_run(Path(run), Path(checkpoint) if checkpoint else None, device)
        self.context = cfg.model.context
        self._device = next(self.model.parameters()).device  # "auto" resolved as load_run resolved it
        self.max_gen_toks = int(max_gen_toks)

    # ------------------------------------------------------------------------- requests

    def loglikelihood(self, requests) -> list[tuple[float, bool]]:
        out = []
        for request in requests:
            context, continuation = request.args
            context_ids, continuation_ids = self._encode_pair(context, continuation)
            result = self._score(context_ids, continuation_ids)
            self.cache_hook.add_partial("loglikelihood", request.args, result)
            out.append(result)
        return out

    def loglikelihood_rolling(self, requests) -> list[float]:
        out = []
        for request in requests:
            (text,) = request.args
            logprob, _ = self._score(self._start(), self.tokenizer.encode(text))
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), logprob)
            out.append(logprob)
        return out

    def generate_until(self, requests) -> list[str]:
        out = []
        for request in requests:
            context, kwargs = request.args
            kwargs = dict(kwargs or {})
            until = kwargs.get("until") or []
            until = [until] if isinstance(until, str) else list(until)
            text = self._greedy(context, int(kwargs.get("max_gen_toks", self.max_gen_toks)), until)
            self.cache_hook.add_partial("generate_until", (context, request.args[1]), text)
            out.append(text)
        return out

    # -------------------------------------------------------------------------- scoring

    def _start(self) -> list[int]:
        return [] if self.tokenizer.eos_id is None else [self.tokenizer.eos_id]

    def _encode_pair(self, context: str, continuation: str) -> tuple[list[int], list[int]]:
        spaces = len(context) - len(context.rstrip(" "))
        if spaces:
            context, continuation = context[:-spaces], context[-spaces:] + continuation
        whole = self.tokenizer.encode(context + continuation)
        n = len(self.tokenizer.encode(context)) if context else 0
        return self._start() + whole[:n], whole[n:]

    @torch.no_grad()
    def _score(self, context: list[int], target: list[int]) -> tuple[float, bool]:
        """Sum of log p(target_i | everything before it, at most the model's context) and whether every
        target token is the model's argmax. Targets are scored in windows of up to T tokens."""
        seq = context + target
        T, total, greedy = self.context, 0.0, True
        position = max(len(context), 1)  # the first token of a sequence has nothing to be predicted from
        while position < len(seq):
            end = min(position + T, len(seq))
            first = max(0, end - 1 - T)  # inputs seq[first : end - 1] predict seq[first + 1 : end]
            x = torch.tensor([seq[first : end - 1]], device=self._device)
            logprobs = torch.log_softmax(self.model(x)[0].float(), dim=-1)[-(end - position):]  # (n, V)
            y = torch.tensor(seq[position:end], device=self._device)
            total += logprobs.gather(1, y[:, None]).sum().item()
            greedy = greedy and bool((logprobs.argmax(-1) == y).all())
            position = end
        return total, greedy

    @torch.no_grad()
    def _greedy(self, context: str, max_tokens: int, until: list[str]) -> str:
        ids = self._start() + self.tokenizer.encode(context) or [0]
        generated: list[int] = []
        for _ in range(max_tokens):
            x = torch.tensor([(ids + generated)[-self.context :]], device=self._device)
            token = int(self.model(x)[0, -1].argmax())
            if token == self.tokenizer.eos_id:
                break
            generated.append(token)
            text = self.tokenizer.decode(generated)
            if any(stop in text for stop in until):
                break
        text = self.tokenizer.decode(generated)
        for stop in until:
            text = text.split(stop)[0]
        return text


def offline_where_unreachable() -> str | None:
    """Where the hub's host does not resolve, the hub and datasets libraries set offline (before either is
    imported: they read it then) and the host returned: the tasks' datasets then come from the datasets
    cache at once, or fail at once, instead of five retries (about 25 s) per file. None otherwise."""
    import os
    import sys

    from vslm.data.sources import OFFLINE, offline

    if offline() or {"datasets", "huggingface_hub"} & set(sys.modules) or not (host := hub_unresolvable()):
        return None
    os.environ.update({v: "1" for v in OFFLINE})
    return host


def task_manager(tasks: list[str], include_path: Path | None = None):
    """The harness's TaskManager, once every name of `tasks` is known to it (a name typed wrong: a UsageError,
    exit 2, as an unknown config or data source). With include_path, only the tasks found there are known."""
    offline_where_unreachable()
    from lm_eval.tasks import TaskManager

    manager = TaskManager(include_path=str(include_path), include_defaults=False) if include_path else TaskManager()
    unknown = [t for t in tasks if t not in manager.all_tasks]
    if unknown:
        where = f"in {include_path}" if include_path else "in lm-evaluation-harness's task list"
        raise UsageError(f"unknown task(s) {', '.join(unknown)}{did_you_mean(unknown[0], manager.all_tasks)} {where}")
    return manager


def run_tasks(run: Path, tasks: list[str], include_path: Path | None = None, limit: float | None = None,
              num_fewshot: int | None = None, checkpoint: Path | None = None, device: str = "cpu",
              manager=None) -> dict:
    """lm_eval.simple_evaluate on the run; returns {task: {metric: value}}. With include_path, only
    the tasks found there are known (no download of the harness's task index is needed)."""
    import lm_eval

    manager = manager or task_manager(tasks, include_path)  # built once: the harness's task index is slow
    model = VSLMHarnessLM(str(run), str(checkpoint) if checkpoint else None, device)
    try:
        results = lm_eval.simple_evaluate(model=model, tasks=tasks, task_manager=manager, limit=limit,
                                          num_fewshot=num_fewshot, log_samples=False, bootstrap_iters=0)
    except ConnectionError as e:  # datasets' "Couldn't reach ... on the Hub": offline, or the hub is down
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        host = hub_unresolvable()
        why = (f"{host} does not resolve, so only the datasets cache was asked: {first[:200]}" if host
               else first[:200])
        raise VSLMError(f"a task's dataset did not load from the Hugging Face hub ({why}); check the "
                        "connection, or run once online: the datasets cache then serves it with "
                        "HF_DATASETS_OFFLINE=1") from None
    return {task: {k.split(",")[0]: v for k, v in metrics.items()
                   if isinstance(v, int | float) and "_stderr" not in k}  # the metrics, not names and aliases
            for task, metrics in results["results"].items()}

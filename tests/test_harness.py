"""lm-evaluation-harness on a VSLM run, offline: tiny YAML tasks over local JSON lines files, run by
the harness's own evaluator, checked against the model's probabilities computed here directly."""

import json
import math
import os
import subprocess
import sys

import pytest
import torch

from conftest import tiny_overrides
from vslm.cli import main
from vslm.train.run_folder import load_run

pytest.importorskip("lm_eval", reason="lm-evaluation-harness is not installed (pip install 'vslm[harness]')")

DOCS = ["the cat sat on the mat.", "Tom had a red ball.", "Mia  said hi\tto Sam."]  # each under 32 bytes
QUESTIONS = [{"question": "Tom had a red", "choices": ["ball.", "xqzv."], "answer": 0},
             {"question": "Once upon a", "choices": ["qqq", "time"], "answer": 1},
             {"question": "She said", "choices": ["hello", "zzzz"], "answer": 0}]


def write_task(folder, name, rows, body):
    data = folder / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (folder / f"{name}.yaml").write_text(f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n"
                                         f"    test: {data}\ntest_split: test\n{body}")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A tiny byte-level model (context 32) trained for a few steps on the stories."""
    folder = tmp_path_factory.mktemp("harness") / "run"
    assert main(["train", "tiny", *tiny_overrides(), "data.tokenizer=byte", "train.steps=40", "train.eval_every=0",
                 "train.eval_windows=8", "--out", str(folder)]) == 0
    return folder


def logprob(model, ids: list[int], first: int) -> tuple[float, bool]:
    """log p(ids[first:] | ids[:first]) from one forward pass over the whole sequence, and greediness."""
    logits = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0], dim=-1)
    targets = torch.tensor(ids[first:])
    picked = logits[first - 1 :].gather(1, targets[:, None])
    return picked.sum().item(), bool((logits[first - 1 :].argmax(-1) == targets).all())


def test_tasks_through_the_harness_match_the_model(run, tmp_path, capsys):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    write_task(tasks, "vslm_rolling", [{"text": t} for t in DOCS],
               'output_type: loglikelihood_rolling\ndoc_to_text: ""\ndoc_to_target: "{{text}}"\nmetric_list:\n'
               "  - metric: word_perplexity\n  - metric: bits_per_byte\n")
    write_task(tasks, "vslm_choice", QUESTIONS,
               'output_type: multiple_choice\ndoc_to_text: "{{question}}"\ndoc_to_choice: "{{choices}}"\n'
               'doc_to_target: "{{answer}}"\nmetric_list:\n  - metric: acc\n')
    assert main(["eval", str(run), "--tasks", "vslm_rolling", "vslm_choice", "--include-path", str(tasks),
                 "--json"]) == 0
    results = json.loads(capsys.readouterr().out.strip().splitlines()[-1])["tasks"]

    _, model, tok = load_run(run)
    eos = tok.eos_id
    with torch.no_grad():
        lls = [logprob(model, [eos, *tok.encode(t)], 1)[0] for t in DOCS]
        words = sum(len(t.split()) for t in DOCS)
        n_bytes = sum(len(t.encode()) for t in DOCS)
        assert results["vslm_rolling"]["word_perplexity"] == pytest.approx(math.exp(-sum(lls) / words), rel=1e-5)
        assert results["vslm_rolling"]["bits_per_byte"] == pytest.approx(-sum(lls) / n_bytes / math.log(2), rel=1e-5)
        correct = 0
        for q in QUESTIONS:  # the harness joins question and choice with a space
            context = [eos, *tok.encode(q["question"])]
            scores = [logprob(model, context + tok.encode(" " + c), len(context))[0] for c in q["choices"]]
            correct += int(max(range(len(scores)), key=scores.__getitem__) == q["answer"])
        assert results["vslm_choice"]["acc"] == pytest.approx(correct / len(QUESTIONS))


def test_adapter_requests_directly(run):
    from lm_eval.api.instance import Instance

    from vslm.eval.harness import VSLMHarnessLM

    lm = VSLMHarnessLM(str(run))
    _, model, tok = load_run(run)

    def request(kind, args):
        return Instance(request_type=kind, doc={}, arguments=args, idx=0)

    # a trailing space of the context moves to the continuation; greedy is the argmax check
    (ll, greedy), = lm.loglikelihood([request("loglikelihood", ("Tom had a ", "red ball"))])
    expected = logprob(model, [tok.eos_id, *tok.encode("Tom had a red ball")], 1 + len("Tom had a"))
    assert ll == pytest.approx(expected[0], rel=1e-5) and greedy == expected[1]
    # a text longer than the context (32) is scored in windows: every token once, all finite
    long = "Once upon a time there was a little fox who liked to run in the green forest."
    (rolled,) = lm.loglikelihood_rolling([request("loglikelihood_rolling", (long,))])
    assert -len(long) * 8 < rolled < 0
    # greedy generation stops at the stop string
    prompt = [tok.eos_id, *tok.encode("Once upon a")]
    with torch.no_grad():
        ref = tok.decode(model.generate(torch.tensor([prompt]), 12, temperature=0)[0, len(prompt) :].tolist())
    (text,) = lm.generate_until([request("generate_until", ("Once upon a", {"until": ["\n"], "max_gen_toks": 12}))])
    assert text == ref.split("\n")[0] and "\n" not in text


def test_a_task_typed_wrong_or_a_dataset_offline_is_one_line(run, tmp_path, capsys):
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    # a task over a hub dataset (hellaswag's YAML in brief): offline, its dataset cannot load
    (tasks / "hub_task.yaml").write_text(
        'task: hub_task\ndataset_path: Rowan/hellaswag\ntest_split: validation\noutput_type: multiple_choice\n'
        'doc_to_text: "{{ctx}}"\ndoc_to_choice: "{{endings}}"\ndoc_to_target: "{{label}}"\n'
        "metric_list:\n  - metric: acc\n")
    assert main(["eval", str(run), "--tasks", "hub_tsk", "--include-path", str(tasks)]) == 2
    assert capsys.readouterr().err == f"vslm: error: unknown task(s) hub_tsk (did you mean hub_task?) in {tasks}\n"
    # offline, with empty caches (a cached copy would load and run)
    env = os.environ | {"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"),
                        "HF_DATASETS_CACHE": str(tmp_path / "hf" / "datasets")}
    r = subprocess.run([sys.executable, "-m", "vslm", "eval", str(run), "--tasks", "hub_task", "--include-path",
                        str(tasks), "--limit", "1"], capture_output=True, text=True, env=env, timeout=300)
    last = r.stderr.strip().splitlines()[-1]
    assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
    assert last.startswith("vslm: error: a task's dataset did not load from the Hugging Face hub (")
    # no offline setting, but a hub whose name does not resolve (.invalid never does): the cache is asked at
    # once, not the hub five times over (about 25 s of retries, a line each)
    env = {k: v for k, v in env.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE") and
           not k.lower().endswith("_proxy")} | {"HF_ENDPOINT": "https://hub.invalid"}
    r = subprocess.run([sys.executable, "-m", "vslm", "eval", str(run), "--tasks", "hub_task", "--include-path",
                        str(tasks), "--limit", "1"], capture_output=True, text=True, env=env, timeout=300)
    assert r.returncode == 1 and "Retrying" not in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith(
        "vslm: error: a task's dataset did not load from the Hugging Face hub (hub.invalid does not resolve, so "
        "only the datasets cache was asked: ")


def test_every_name_is_checked_before_anything_is_scored(run, tmp_path, capsys, monkeypatch):
    """`--on stories nosuch`, or `--on stories --tasks nosuch`, scored the stories for minutes, then exited 2 and
    printed nothing of them. The names are checked (and the corpora tokenized) before the first score."""
    from vslm.eval import corpus

    def scored(*args, **kwargs):
        raise AssertionError("scored before every name was checked")

    monkeypatch.setattr(corpus, "score_text", scored)
    assert main(["eval", str(run), "--on", "stories", "nosuch"]) == 2
    assert capsys.readouterr().err.startswith("vslm: error: cannot evaluate on nosuch: unknown data source 'nosuch'")
    (tmp_path / "tasks").mkdir()
    assert main(["eval", str(run), "--on", "stories", "--tasks", "nosuch", "--include-path",
                 str(tmp_path / "tasks")]) == 2
    assert capsys.readouterr().err.startswith("vslm: error: unknown task(s) nosuch")

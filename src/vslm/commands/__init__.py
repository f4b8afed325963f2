"""One module per `vslm` command that is more than a call into the layers below.

    bench.py       `vslm bench train | attention | prepare`: throughput against the reference, MFU, peak RSS
    bench_gpu.py   `vslm bench gpu` (scripts/gpu_check.sh): 10M and 50M models, peak, memory, Shakespeare
    speedrun.py    `vslm bench speedrun`: the time to val loss 1.88 on tiny Shakespeare, against the reference
    plan.py        `vslm plan`: the model size and token budget that fit in H hours here
    demo.py        `vslm demo`: a ~1M-parameter model on the embedded stories, what it learned, its report
    describe.py    `vslm describe`: the model a config builds, block by block
    shape.py       `vslm shape`: how prompts reshape a continuation's distribution
    experiment.py  `vslm experiment`: a plain experiment (vslm.lab) or a knowledge one (vslm.knowledge)

vslm.cli imports each only when its command runs, so `vslm --help` loads no torch.
"""

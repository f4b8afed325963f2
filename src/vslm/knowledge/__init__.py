"""Knowledge apart from reasoning (RESEARCH.md section 5; docs/FACTS.md).

    world.py       FactWorld: entities, facts, the seen/novel pools, the counterfactual copy (pure Python)
    names.py       the word lists names are made of
    render.py      facts and questions as text; the prompt layout shared by training and evaluation
    questions.py   questions of 1 to k hops with answers, choices and supporting facts
    folder.py      the world folder `vslm facts generate` writes: its format, writing and reading
    preloaded.py   preloaded-context examples (a world of their own each) and the fixed-world contrast
    retrieval.py   BM25 over fact cards, iterated over bridge entities for multi-hop questions
    contexts.py    what a model reads before a question: nothing, gold facts and distractors, retrieved cards
    metrics.py     closed-book, open-book, counterfactual accuracy, memorisation ratio, by hops (arithmetic)
    scoring.py     a language model's choice among the answers (log-likelihood; after its steps, for a steps reader)
    probe.py       the linear probe from a name's hidden state to an attribute
    adapters.py    LoRA adapters per group of facts (peft) and the retriever that picks one
    evaluate.py    `vslm facts eval`: all of it on a trained run
    distill.py     `vslm facts distill`: a student that forgets W closed-book but reads it; the relearning test
    reader.py      `vslm facts reader`: a small model that reads facts from its context (word tokens, a curriculum)
"""

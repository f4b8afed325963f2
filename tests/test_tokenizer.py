import pytest

from conftest import SHARED
from vslm.data.tokenizer import ByteTokenizer, CharTokenizer, HFTokenizer, load_tokenizer

TEXT = "Once upon a time, Mia said \"héllo\" to the café ☕.\nThe end."


def _round_trip(tok, tmp_path):
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert int(tok.token_bytes()[ids].sum()) == len(TEXT.encode("utf-8"))
    tok.save(tmp_path / "t.json")
    again = load_tokenizer(tmp_path / "t.json")
    assert again.encode(TEXT) == ids and again.vocab_size == tok.vocab_size and again.eos_id == tok.eos_id


def test_char(tmp_path):
    tok = CharTokenizer.train([TEXT, "xyz"], eos=True)
    assert tok.chars == sorted(set(TEXT + "xyz")) and tok.eos_id == len(tok.chars)
    _round_trip(tok, tmp_path)


def test_byte(tmp_path):
    _round_trip(ByteTokenizer(), tmp_path)


def test_bpe_trained(tmp_path):
    corpus = [f"{TEXT} story number {i} about a red ball and a blue kite" for i in range(200)]
    tok = HFTokenizer.train(corpus, vocab_size=400)
    assert tok.vocab_size == 400 and tok.eos_id is not None
    assert len(tok.encode(TEXT)) < len(TEXT.encode()) / 2  # merges learned
    _round_trip(tok, tmp_path)


@pytest.mark.skipif(not (SHARED / "data/tokenizers/gpt2/vocab.json").is_file(), reason="shared/data not present")
def test_gpt2_from_local_files(tmp_path):
    tok = HFTokenizer.gpt2(SHARED / "data/tokenizers/gpt2")
    assert tok.encode("Hello world") == [15496, 995]
    assert tok.vocab_size == 50257 and tok.eos_id == 50256
    assert tok.token_bytes()[50256] == 0 and tok.decode([15496, 50256, 995]) == "Hello world"
    _round_trip(tok, tmp_path)


def test_encode_in_chunks_keeps_every_text_in_order():
    from vslm.data.tokenizer import encode_in_chunks

    texts = [f"text {i} " * (i % 7) for i in range(1000)]  # 4 chunks of 256 on 2 threads, empty texts included
    encode = lambda t: [len(w) for w in t.split()] + [len(t)]  # noqa: E731
    assert encode_in_chunks(encode, texts) == [encode(t) for t in texts]
    assert encode_in_chunks(encode, texts[:3]) == [encode(t) for t in texts[:3]]

"""Decoder LMs (Llama-, Qwen- and GPT-2-style, tiny and random-init, built from configs): the causal-LM objective
on prompt → completion pairs, GLUE posed as a language-model task, DiffoRA's search over q_proj … down_proj end
to end, the export, and the refusals (no pad token, a task without label words, bad JSONL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import compose_run
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from nas.config import PROJECT_ROOT
from nas.engine.backbone import load_backbone
from nas.engine.logger import NullLogger
from nas.engine.pipeline import run_pipeline
from nas.errors import ConfigError
from objectives import default_glue_dir
from objectives.lm import IGNORE, causal_lm_loss, encode_pair, label_word_scores, read_jsonl

GLUE = default_glue_dir()
SENTENCES = ["a gripping , funny film", "dull and far too long", "the cast is superb", "it never finds its feet",
             "Review: Sentiment: positive negative", "Premise: Hypothesis: Entailed: yes no"]


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with an end-of-sequence token and, like most decoders, no pad token."""
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    texts = SENTENCES + (GLUE / "SST-2" / "train.tsv").read_text().splitlines()[1:2000]
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token="</s>")


def tiny_decoder(kind: str, vocab: int, eos: int = 0) -> torch.nn.Module:
    """A 2-layer decoder of hidden size 32, random init; ``eos`` is the tokenizer's end-of-sequence id."""
    torch.manual_seed(0)
    if kind == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=256))
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=32, intermediate_size=64,
                                            num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                            max_position_embeddings=256))
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=2, n_head=4, n_positions=256,
                                      bos_token_id=eos, eos_token_id=eos))


@pytest.fixture(scope="module")
def decoder_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Each tiny decoder saved with its tokenizer, as a user's local model folder."""
    tokenizer = tiny_tokenizer()
    dirs = {}
    for kind in ("llama", "qwen2", "gpt2"):
        folder = tmp_path_factory.mktemp(kind)
        tiny_decoder(kind, len(tokenizer), tokenizer.eos_token_id).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        dirs[kind] = folder
    return dirs


def write_jsonl(path: Path, n: int) -> Path:
    """Prompt → completion pairs with a learnable rule: the completion repeats the prompt's last word."""
    words = ["film", "cast", "plot", "score", "story", "scene"]
    lines = [json.dumps({"prompt": f"the {words[i % 6]} and the {words[(i * 5 + 1) % 6]} :",
                         "completion": f" {words[(i * 5 + 1) % 6]}"}) for i in range(n)]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_completion_tokens_alone_carry_the_loss() -> None:
    tokenizer = tiny_tokenizer()
    example = encode_pair(tokenizer, "Review: a gripping film\nSentiment:", " positive", max_length=64)
    n_prompt = example["prompt_length"]
    assert example["labels"][:n_prompt] == [IGNORE] * n_prompt
    assert example["labels"][n_prompt:] == example["input_ids"][n_prompt:]
    assert example["input_ids"][-1] == tokenizer.eos_token_id
    logits = torch.randn(1, len(example["input_ids"]), len(tokenizer))
    ids, labels = torch.tensor([example["input_ids"]]), torch.tensor([example["labels"]])
    expected = torch.stack([-torch.log_softmax(logits[0, t - 1], -1)[ids[0, t]]
                            for t in range(n_prompt, ids.shape[1])]).mean()
    torch.testing.assert_close(causal_lm_loss(logits, labels), expected)
    cut = encode_pair(tokenizer, "word " * 100, " positive", max_length=16)  # the prompt is cut from the left
    assert len(cut["input_ids"]) == 16 and cut["labels"][-1] == tokenizer.eos_token_id


def test_label_word_scores_are_the_words_log_likelihoods() -> None:
    tokenizer = tiny_tokenizer()
    model = tiny_decoder("llama", len(tokenizer)).eval()
    prompts = [tokenizer(text)["input_ids"] for text in ("Review: dull\nSentiment:", "Review: superb fun\nSentiment:")]
    words = [tokenizer(" negative", add_special_tokens=False)["input_ids"],
             tokenizer(" positive", add_special_tokens=False)["input_ids"]]
    width = max(len(p) for p in prompts)
    ids = torch.zeros(2, width, dtype=torch.long)
    for b, p in enumerate(prompts):
        ids[b, :len(p)] = torch.tensor(p)
    with torch.no_grad():
        scores = label_word_scores(lambda i, m: model(input_ids=i, attention_mask=m).logits, ids,
                                   [len(p) for p in prompts], words, pad_id=tokenizer.eos_token_id)
        for b, p in enumerate(prompts):
            for k, w in enumerate(words):
                full = torch.tensor([p + w])
                logprobs = torch.log_softmax(model(input_ids=full).logits[0], -1)
                expected = sum(float(logprobs[len(p) + j - 1, t]) for j, t in enumerate(w))
                assert float(scores[b, k]) == pytest.approx(expected, abs=1e-4)


def test_bad_jsonl_names_the_file_and_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text('{"prompt": "a", "completion": " b"}\n{"prompt": "a"}\n')
    with pytest.raises(ValueError, match="bad.jsonl:2: each line needs a string \"prompt\" and a non-empty"):
        read_jsonl(path)
    first = read_jsonl(write_jsonl(tmp_path / "ok.jsonl", 3))[0]
    assert first == {"prompt": "the film and the cast :", "completion": " cast"}


def test_a_decoder_without_a_pad_token_is_refused_with_the_fix(decoder_dirs: dict[str, Path]) -> None:
    with pytest.raises(ConfigError, match="has no pad token.*set model.pad_token=eos"):
        load_backbone(str(decoder_dirs["llama"]), 0, objective="causal_lm")
    backbone = load_backbone(str(decoder_dirs["llama"]), 0, objective="causal_lm", pad_token="eos")
    assert backbone.tokenizer.pad_token == "</s>" and backbone.head_names == []
    assert isinstance(backbone.model, LlamaForCausalLM) and backbone.tokenizer.padding_side == "right"


def decoder_run(tmp_path: Path, folder: Path, overrides: list[str]) -> dict:
    cfg = compose_run([f"model.name_or_path={folder}", "model.pad_token=eos", "logger=none", "seed=0",
                       "task.max_train_samples=64", "task.max_eval_samples=32", "task.max_length=48",
                       "bilevel.steps=3", "bilevel.batch_size=8", "retrain.steps=4", "retrain.batch_size=8",
                       "criterion.record=[dam]", *overrides])
    return run_pipeline(cfg, tmp_path, NullLogger())


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "qwen2", "gpt2"])
def test_diffora_searches_a_decoder_on_glue_posed_as_a_language_model(tmp_path: Path, kind: str,
                                                                      decoder_dirs: dict[str, Path]) -> None:
    result = decoder_run(tmp_path, decoder_dirs[kind], ["task=sst2", "task.objective=causal_lm"])
    selection = json.loads((tmp_path / "selection.json").read_text())
    types = {"llama": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
             "qwen2": {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"},
             "gpt2": {"c_attn", "c_proj", "c_fc"}}[kind]
    assert {name.rsplit(".", 1)[1] for name in selection["dam"]} == types
    assert len(selection["selected"]) == len(selection["dam"]) // 2
    assert set(result["metrics"]) == {"accuracy"} and 0.0 <= result["score"] <= 1.0
    assert result["majority_baseline"]["accuracy"] > 0.4 and result["head_params"] == 0
    assert result["objective"] == "causal_lm"
    config = json.loads((tmp_path / "adapter" / "adapter_config.json").read_text())
    assert sorted(config["target_modules"]) == sorted(selection["selected"]) and not config["modules_to_save"]


def test_prompt_completion_jsonl_trains_and_reports_completion_metrics(tmp_path: Path,
                                                                      decoder_dirs: dict[str, Path]) -> None:
    train, dev = write_jsonl(tmp_path / "train.jsonl", 64), write_jsonl(tmp_path / "dev.jsonl", 16)
    result = decoder_run(tmp_path, decoder_dirs["llama"], ["task=jsonl", f"task.train_file={train}",
                                                           f"task.dev_file={dev}", "method=lora"])
    assert set(result["metrics"]) == {"token_accuracy", "completion_loss"}
    assert 0.0 <= result["score"] <= 1.0 and result["metrics"]["completion_loss"] > 0
    assert result["task"] == "jsonl" and result["dev_examples"] == 16


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["llama", "gpt2"])
def test_a_decoders_adapter_reloads_with_peft_and_merges_into_a_causal_lm(tmp_path: Path, kind: str,
                                                                          decoder_dirs: dict[str, Path]) -> None:
    from peft import PeftModel

    from nas.adapters.export import export_run

    run = tmp_path / "run"
    run.mkdir()
    decoder_run(run, decoder_dirs[kind], ["task=sst2", "task.objective=causal_lm", "method=diffora",
                                          "retrain.lr=1e-2"])
    export_run(run, tmp_path / "merged", merge=True)
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged").eval()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    base = AutoModelForCausalLM.from_pretrained(decoder_dirs[kind]).eval()
    adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(decoder_dirs[kind]),
                                        str(run / "adapter")).eval()
    ids = torch.tensor([[5, 17, 42, 99, 3, 250]])
    with torch.no_grad():
        expected = adapted(input_ids=ids).logits
        assert not torch.allclose(expected, base(input_ids=ids).logits, atol=1e-4)  # the adapter changed something
        torch.testing.assert_close(merged(input_ids=ids).logits, expected, rtol=0, atol=1e-5)


def test_a_task_without_label_words_is_refused(decoder_dirs: dict[str, Path], tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="task 'stsb' has no label words for task.objective=causal_lm"):
        decoder_run(tmp_path, decoder_dirs["llama"], ["task=stsb", "task.objective=causal_lm"])


@pytest.mark.slow
def test_the_command_runs_a_tiny_llama_search_end_to_end(tmp_path: Path, decoder_dirs: dict[str, Path]) -> None:
    env = {**os.environ, "WANDB_MODE": "disabled", "HYDRA_FULL_ERROR": "0"}
    result = subprocess.run([sys.executable, "-m", "nas.cli", "run", f"model.name_or_path={decoder_dirs['llama']}",
                             "model.pad_token=eos", "task=sst2", "task.objective=causal_lm", "task.max_length=48",
                             "task.max_train_samples=64", "task.max_eval_samples=32", "bilevel.steps=3",
                             "bilevel.batch_size=8", "retrain.steps=3", "retrain.batch_size=8", "logger=none",
                             f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300, env=env,
                            cwd=PROJECT_ROOT)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "sst2 dev {'accuracy'" in result.stdout and (tmp_path / "metrics.json").exists()
    assert any(name.endswith("mlp.down_proj")
               for name in json.loads((tmp_path / "selection.json").read_text())["dam"])

"""Which backend a configuration picks, and what a dry run of a local model costs: decided without loading it."""

import pytest

from melt.annotate import AnnotateConfig
from melt.annotate.run import estimate_run
from melt.demo import example_corpus_path
from melt.errors import MeltError
from melt.llm import choose_backend


@pytest.fixture
def no_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)


def test_no_server_and_no_key_means_the_bundled_model(no_key):
    choice = choose_backend(AnnotateConfig())
    assert (choice.kind, choice.model, choice.free) == ("local", None, True)
    assert choice.recorded_model.endswith(".gguf")


def test_gguf_path_runs_locally_and_server_wins_over_everything(no_key):
    assert (
        choose_backend(AnnotateConfig(model="/models/llama-3-8b.Q4.gguf")).recorded_model
        == "llama-3-8b.Q4.gguf"
    )
    server = choose_backend(AnnotateConfig(base_url="http://127.0.0.1:8000/v1"))
    assert (server.kind, server.model, server.free) == ("openai", "gpt-4o-2024-08-06", False)


def test_api_key_means_openai(monkeypatch):
    monkeypatch.setenv("MY_KEY", "sk-test-not-real")
    choice = choose_backend(AnnotateConfig(api_key_env="MY_KEY", model="gpt-4o-mini"))
    assert (choice.kind, choice.model) == ("openai", "gpt-4o-mini")
    assert choice.base_url.startswith("https://")


def test_model_name_without_a_server_is_a_clear_error(no_key):
    with pytest.raises(MeltError, match="needs a server"):
        choose_backend(AnnotateConfig(model="gpt-4o-mini"))


def test_dry_run_of_the_local_model_costs_nothing_but_counts_tokens(no_key):
    estimate = estimate_run(example_corpus_path(), AnnotateConfig())
    assert estimate.cost_usd == 0 and estimate.cost_usd_max == 0
    assert estimate.prompt_tokens > 0 and estimate.requests == 12
    assert estimate.model.endswith(".gguf")


@pytest.mark.parametrize(
    "base_url",
    ["http://127.0.0.1:8000/v1", "http://127.0.0.1:8000/v1/", "https://me:pa55word-x@gpu.example/v1"],
)
def test_a_dry_run_knows_the_identity_the_backend_will_report(no_key, base_url):
    import asyncio

    from melt.llm import make_backend

    config = AnnotateConfig(base_url=base_url, model="m")
    backend = make_backend(config)
    assert choose_backend(config).identity() == backend.identity()
    assert "pa55word" not in str(backend.identity())
    asyncio.run(backend.aclose())

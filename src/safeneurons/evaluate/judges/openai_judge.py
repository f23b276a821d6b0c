"""Judge through an OpenAI-compatible chat-completions endpoint (OpenAI, vLLM, llama.cpp, TGI, Ollama).

Configuration, first found wins: arguments, then ``$SAFENEURONS_JUDGE_BASE_URL`` and
``$SAFENEURONS_JUDGE_MODEL``; the API key is read from ``$<api_key_env>`` (default ``OPENAI_API_KEY``) and is
optional for local servers. The rubric and parsing are those of :class:`~.model_judge.ModelJudge`."""

from __future__ import annotations

import os
from pathlib import Path

from safeneurons.errors import JudgeError
from safeneurons.evaluate.judges.backends import OpenAIChatBackend
from safeneurons.evaluate.judges.base import JUDGES
from safeneurons.evaluate.judges.degenerate import DegenerateConfig
from safeneurons.evaluate.judges.model_judge import ModelJudge, Rubric

BASE_URL_ENV = "SAFENEURONS_JUDGE_BASE_URL"
MODEL_ENV = "SAFENEURONS_JUDGE_MODEL"


class OpenAIJudge(ModelJudge):
    """:class:`ModelJudge` over :class:`~.backends.OpenAIChatBackend`."""

    def __init__(
        self,
        base_url: str | None = None,
        model: str | None = None,
        *,
        api_key_env: str = "OPENAI_API_KEY",
        timeout: float = 60.0,
        rubric: str | Rubric = "strongreject",
        max_new_tokens: int | None = None,
        max_retries: int = 2,
        concurrency: int = 1,
        precheck: str = "all",
        degenerate_config: DegenerateConfig | None = None,
        data_dir: str | Path | None = None,
        name: str | None = None,
    ) -> None:
        url = base_url or os.environ.get(BASE_URL_ENV)
        model_name = model or os.environ.get(MODEL_ENV)
        if not url:
            raise JudgeError(
                f"openai judge: no endpoint; pass base_url= or set ${BASE_URL_ENV} "
                "(e.g. https://api.openai.com/v1 or http://127.0.0.1:8000/v1)."
            )
        if not model_name:
            raise JudgeError(f"openai judge: no model name; pass model= or set ${MODEL_ENV}.")
        backend = OpenAIChatBackend(
            url,
            model_name,
            api_key_env=api_key_env,
            timeout=timeout,
            max_retries=max_retries,
            concurrency=concurrency,
        )
        rubric_name = rubric.name if isinstance(rubric, Rubric) else rubric
        super().__init__(
            backend,
            rubric,
            max_new_tokens=max_new_tokens,
            precheck=precheck,
            degenerate_config=degenerate_config,
            data_dir=data_dir,
            name=name or f"openai:{model_name}:{rubric_name}",
        )


@JUDGES.register("openai", summary="Model judge over an OpenAI-compatible /chat/completions endpoint")
def make_openai_judge(**kwargs: object) -> OpenAIJudge:
    return OpenAIJudge(**kwargs)  # type: ignore[arg-type]

"""The part the world's gold and AI judges share: delegation to a :mod:`rlhfkit.worlds` judge. Torch-free."""

from __future__ import annotations

from collections.abc import Sequence

from rlhfkit.worlds import Prompt, World


class WorldJudgeWrapper:
    """Adds the judge interface (``name``, ``score_batch``) to a world judge held in ``self.inner``.

    It knows only the world's prompts: an unknown prompt text raises ``KeyError`` naming it.
    """

    name = "world"
    world: World
    inner: object

    def score(self, prompt: Prompt | str, response: str) -> float:
        return self.inner.score(prompt, response)  # type: ignore[attr-defined]

    def score_batch(self, prompts: Sequence[Prompt | str], responses: Sequence[str]) -> list[float]:
        return [self.score(p, r) for p, r in zip(prompts, responses)]

    def compare(self, prompt: Prompt | str, a: str, b: str) -> str:
        return self.inner.compare(prompt, a, b)  # type: ignore[attr-defined]

    def classify(self, prompt: Prompt | str, response: str) -> str:
        """The behaviour this judge believes it sees (the AI judge reads polite harm it missed as good)."""
        return self.inner.classify(prompt, response)  # type: ignore[attr-defined]

    def knows(self, prompt: object) -> bool:
        """Whether ``prompt`` is one of the world's prompts (a ``Prompt`` or a text it can look up)."""
        return isinstance(prompt, Prompt) or (isinstance(prompt, str) and self.world.find(prompt) is not None)

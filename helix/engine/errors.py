"""Engine errors beyond bad user input (which is `helix.errors.HelixInputError`)."""

from __future__ import annotations


class KVCacheExhaustedError(RuntimeError):
    """The paged KV cache has too few free blocks for a request.

    Raised by `BlockManager.allocate`/`append` when called without a successful `can_allocate`/
    `can_append` first. Callers that check first never see it; the cache is left unchanged.
    """

    def __init__(self, num_blocks_needed: int, num_blocks_free: int) -> None:
        self.num_blocks_needed = num_blocks_needed
        self.num_blocks_free = num_blocks_free
        super().__init__(
            f"KV cache exhausted: {num_blocks_needed} blocks needed, {num_blocks_free} free "
            "(finish or cancel sequences, or give the stage more memory)"
        )

"""Settings from the environment (prefix VLMOPS_) and the paths derived from them."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    """Where vlmops keeps data, the npm cache and the embedding store."""

    model_config = SettingsConfigDict(env_prefix="VLMOPS_")

    home: Path = Field(default_factory=lambda: Path.home() / ".cache" / "vlmops")
    store_url: str | None = None

    @property
    def data_dir(self) -> Path:
        """Directory holding fetched data sets."""
        return self.home / "data"

    @property
    def store_path(self) -> Path:
        """Default SQLite embedding store."""
        return self.home / "store.sqlite"

    def resolved_store_url(self) -> str:
        """The store URL: VLMOPS_STORE_URL if set, else SQLite under the home directory."""
        return self.store_url or f"sqlite:///{self.store_path}"


@lru_cache(maxsize=1)
def _cached() -> Settings:
    return Settings()


def get_settings(fresh: bool = False) -> Settings:
    """Current settings; `fresh=True` re-reads the environment (used by tests)."""
    if fresh:
        _cached.cache_clear()
    return _cached()

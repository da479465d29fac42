"""Typed settings, read from the environment (prefix ``CONSULT_``) or given explicitly."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Everything the app needs to start. Built once by the caller, never at import."""

    model_config = SettingsConfigDict(env_prefix="CONSULT_", extra="ignore")

    data_dir: Path = PROJECT / "data"
    database_url: str = Field(default="", validation_alias="DATABASE_URL")
    knowledge_base: Path = PROJECT / "knowledge_base"
    rasa_url: str = "http://127.0.0.1:5005"
    """One engine, or several separated by commas (scale-out): tried in turn, the next one when one is down."""
    rasa_timeout: float = 10.0
    engine_endpoints: Path = PROJECT / "endpoints.yml"
    """Rasa's endpoints file: ``endpoints.yml`` (in-memory stores, one engine) or ``endpoints-scale.yml``."""
    engine_host: str = "127.0.0.1"
    """Where ``python -m bot engine`` listens: loopback, or a private address when app workers run elsewhere."""
    claim_lease_seconds: float = 60.0
    """A message or delivery claimed longer ago than this by a worker that did not finish is taken over."""
    max_in_flight: int = 16
    """Messages one app worker answers at once; beyond it new ones wait for the background loop (webhooks stay fast)."""
    host: str = "127.0.0.1"
    port: int = 8000
    retry_interval: float = 2.0
    max_message_chars: int = 2000
    engine_message_chars: int = 500
    log_level: str = "INFO"
    session_secret: SecretStr = SecretStr("")
    kb_drafts_dir: Path | None = None
    """Where accepted staff proposals are written as draft entries (default: knowledge_base/drafts)."""
    rate_limit_per_minute: int = 20
    """Messages one platform user may send per minute before the assistant stops answering (0: no limit)."""
    redis_url: str = ""
    """Redis for the rate-limit counters (several workers on several machines); else the database."""
    retention_days: int = 0
    """Messages older than this many days are removed by the background loop (0: kept for ever)."""
    retention_check_seconds: float = 3600.0

    # LINE Messaging API (the channel is on when both secrets are set)
    line_channel_secret: SecretStr = SecretStr("")
    line_channel_access_token: SecretStr = SecretStr("")
    line_api_url: str = "https://api.line.me"
    line_data_api_url: str = "https://api-data.line.me"
    line_timeout: float = 10.0
    line_reply_token_seconds: float = 50.0
    """A reply token is used only this long after the event (LINE accepts it for about a minute)."""

    # Telegram Bot API (the channel is on when the bot token is set)
    telegram_bot_token: SecretStr = SecretStr("")
    telegram_secret_token: SecretStr = SecretStr("")
    """Checked on every webhook call (X-Telegram-Bot-Api-Secret-Token); required for webhooks."""
    telegram_api_url: str = "https://api.telegram.org"
    telegram_public_url: str = ""
    """The app's public https address, for ``python -m connectors.telegram set-webhook``."""
    telegram_polling: bool = False
    """Long polling instead of a webhook (no public address needed)."""
    telegram_timeout: float = 10.0

    # Staff console and API (bot/web/console.py, bot/web/api.py)
    console_session_hours: float = 12.0
    """How long a console sign-in lasts (signed with ``session_secret``, else a secret generated into the data dir)."""
    console_secure_cookie: bool = False
    """Mark the session cookie Secure (set it when the console is served over https)."""
    console_login_limit: int = 20
    """Failed console logins allowed from one address within ``console_login_window_minutes``."""
    console_login_window_minutes: int = 15
    console_page_size: int = 50

    # Machine translation (bot/translation.py): argos packages installed from local .argosmodel files
    translation_dir: Path | None = None
    """argos folder (packages in ``packages/``); default ``<data_dir>/argos``."""
    translation_threads: int = 1
    """CPU threads per translation model."""

    # Disaster alerts (bot/broadcast.py)
    telegram_broadcast_rate: float = 30.0
    """Alert messages a second to Telegram, all chats together (Telegram allows about 30)."""
    broadcast_workers: bool = True
    """Deliver queued alerts from this app process (set false where a separate ``alert worker`` runs)."""

    def rasa_urls(self) -> list[str]:
        """The engine addresses in ``rasa_url`` (comma-separated), in order."""
        return [url.strip().rstrip("/") for url in self.rasa_url.split(",") if url.strip()]

    def resolved_database_url(self) -> str:
        """``DATABASE_URL`` when set, else an SQLite file under the data folder."""
        if self.database_url:
            url = self.database_url
            if url.startswith("postgresql://"):
                url = "postgresql+psycopg://" + url.removeprefix("postgresql://")
            return url
        return f"sqlite:///{self.data_dir / 'consult.db'}"

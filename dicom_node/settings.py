"""The node's one settings object: TOML file, then ``LLNM_*`` environment variables.

Precedence (highest first): keyword arguments, environment variables
(``LLNM_DICOM__PORT=11112``; nested fields joined by ``__``), the TOML file,
the defaults below. The TOML file is the ``--config`` option of the CLI or the
``LLNM_CONFIG`` environment variable.

Longer than 500 lines: every table of the configuration is here, so that one module
holds what a settings file may say (the export destinations' kinds included).
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path
from typing import Annotated, Any, Literal, Self
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    SecretStr,
    Tag,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    TomlConfigSettingsSource,
)

from imaging.scope import ScopeRules
from models.demo import DEMO_BUNDLE_DIR

CONFIG_ENV_VAR = "LLNM_CONFIG"
_AE_TITLE_CHARS = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789 _-.")


def _check_ae_title(value: str) -> str:
    value = value.strip()
    if not 1 <= len(value) <= 16 or not set(value) <= _AE_TITLE_CHARS:
        raise ValueError(f"AE title {value!r} must be 1-16 characters of A-Z, 0-9, space, _ - .")
    return value


class _Section(BaseModel):
    """A settings table; unknown keys are errors, so typos never pass silently."""

    model_config = ConfigDict(extra="forbid")


class AllowedCaller(_Section):
    """A calling AE that may associate, optionally only from given hosts."""

    ae_title: str
    hosts: list[str] = Field(
        default_factory=list,
        description="IP addresses or CIDR networks; empty means any host.",
    )

    _check_ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("hosts")
    @classmethod
    def _check_hosts(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            ipaddress.ip_network(host, strict=False)  # raises ValueError on garbage
        return hosts

    def admits(self, ae_title: str, address: str) -> bool:
        """Whether this entry lets ``ae_title`` associate from ``address``."""
        if ae_title.strip() != self.ae_title:
            return False
        if not self.hosts:
            return True
        try:
            peer = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(peer in ipaddress.ip_network(host, strict=False) for host in self.hosts)


def _require_tls_files(*paths: Path | None) -> None:
    """Refuse a TLS file that is named but not there."""
    for path in paths:
        if path is not None and not path.is_file():
            raise ValueError(f"TLS file not found: {path}")


class TLSSettings(_Section):
    """Optional TLS on the listener (DICOM PS3.15 Annex B secure transport)."""

    enabled: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    # CA bundle that signs client certificates; set it to require mutual TLS.
    ca_file: Path | None = None

    @model_validator(mode="after")
    def _files_present(self) -> Self:
        if not self.enabled:
            return self
        if self.cert_file is None or self.key_file is None:
            raise ValueError("tls.enabled needs tls.cert_file and tls.key_file")
        _require_tls_files(self.cert_file, self.key_file, self.ca_file)
        return self


class DicomSettings(_Section):
    """The DICOM listener."""

    ae_title: str = "LLNM_NODE"
    host: str = "127.0.0.1"
    # 0 picks a free port (tests, demo).
    port: int = Field(11112, ge=0, le=65535)
    # Calling AEs allowed to associate. Empty: any caller, which is only allowed on a
    # loopback address unless accept_any_caller is set.
    allowed_callers: list[AllowedCaller] = Field(default_factory=list)
    accept_any_caller: bool = False
    # Reject associations whose called AE title is not ae_title.
    require_called_ae: bool = True
    # Open associations at once, over all listener processes.
    max_associations: int = Field(16, ge=1)
    # Processes that receive (accepting from one shared listening socket); None: one per core.
    # 1 receives in the node's own process.
    listener_processes: int | None = Field(None, ge=1)
    # Largest PDU we accept, bytes; 0 means no limit.
    max_pdu: int = Field(262_144, ge=0)
    # Largest instance taken, as received, and largest a deflated data set may inflate
    # to (it is inflated in memory to be read); larger ones are refused 0xA700.
    max_instance_mb: float = Field(2048.0, gt=0)
    max_inflated_mb: float = Field(64.0, gt=0)
    acse_timeout_s: float = Field(30.0, gt=0)
    dimse_timeout_s: float = Field(60.0, gt=0)
    network_timeout_s: float = Field(60.0, gt=0)
    tls: TLSSettings = Field(default_factory=TLSSettings)

    _check_ae = field_validator("ae_title")(_check_ae_title)

    @model_validator(mode="after")
    def _refuse_open_listener(self) -> Self:
        is_loopback = self.host in ("localhost",) or _is_loopback(self.host)
        if not is_loopback and not self.allowed_callers and not self.accept_any_caller:
            raise ValueError(
                f"listening on {self.host} with an empty dicom.allowed_callers would accept "
                "any caller; list the calling AEs (or set dicom.accept_any_caller = true)"
            )
        return self

    @property
    def processes(self) -> int:
        """How many listener processes run (``listener_processes``, else the core count)."""
        return self.listener_processes or os.cpu_count() or 1

    def admits(self, ae_title: str, address: str) -> bool:
        """Whether a calling AE at ``address`` may associate."""
        if self.accept_any_caller or not self.allowed_callers:
            return True
        return any(entry.admits(ae_title, address) for entry in self.allowed_callers)


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class QueryCaller(_Section):
    """A sender the node may ask by C-FIND how many instances of a study it holds."""

    # The calling AE title the sender stores with.
    ae_title: str
    # Where it answers C-FIND (Study Root), and the AE title to call there (default: ae_title).
    host: str
    port: int = Field(ge=1, le=65535)
    called_ae_title: str | None = None

    _check_ae = field_validator("ae_title")(_check_ae_title)

    @field_validator("called_ae_title")
    @classmethod
    def _check_called_ae(cls, value: str | None) -> str | None:
        return None if value is None else _check_ae_title(value)


class CompletionSettings(_Section):
    """When a study counts as complete."""

    # A study becomes a job once no instance arrived for this long.
    quiet_seconds: float = Field(30.0, ge=0)
    # How often the watcher looks for settled studies.
    poll_seconds: float = Field(1.0, gt=0)
    # Senders asked (by C-FIND, calling as export.calling_ae_title), when an association that
    # stored instances of a study is released, how many instances the study has: it is
    # complete once the node holds that many. Other callers, and a sender that cannot
    # answer, complete by the quiet time.
    query_callers: list[QueryCaller] = Field(default_factory=list)
    # Seconds each step of such a query (connect, associate, each answer) may take.
    query_timeout_s: float = Field(3.0, gt=0)

    @field_validator("query_callers")
    @classmethod
    def _one_entry_per_caller(cls, callers: list[QueryCaller]) -> list[QueryCaller]:
        titles = [c.ae_title for c in callers]
        if len(set(titles)) != len(titles):
            raise ValueError("completion.query_callers names a calling AE title twice")
        return callers

    def query_caller(self, calling_ae: str) -> QueryCaller | None:
        """The query entry of ``calling_ae``; None when the node may not ask it."""
        calling_ae = calling_ae.strip()
        return next((c for c in self.query_callers if c.ae_title == calling_ae), None)


class ExecutorSettings(_Section):
    """Where jobs run: the in-process pool (default) or Celery workers behind a broker."""

    # Empty: the embedded default, a thread pool in the node. A Redis URL (e.g.
    # "redis://redis:6379/0"): Celery workers (`llnm-node worker`) run the stages.
    broker_url: str = ""
    # In-process pool size (embedded default only).
    workers: int = Field(1, ge=1)
    # A running job with no stage progress for this long is retried (lost worker or broker).
    stall_timeout_s: float = Field(900.0, gt=0)
    # Redis broker: an unacknowledged task is handed out again after this long.
    visibility_timeout_s: float = Field(3600.0, gt=0)
    # Attempts for a stage that fails with an unexpected (possibly transient) error.
    max_attempts: int = Field(3, ge=1)
    # Wait before retry n is retry_backoff_s * 2 ** (n - 1).
    retry_backoff_s: float = Field(5.0, ge=0)


class ModelSettings(_Section):
    """The model bundle the stages use."""

    # Folder holding nodule/ and thyroid/ segmenters (and, later, the LLNM-Net weights).
    # The default is the demo bundle trained on synthetic phantoms: NOT FOR CLINICAL USE.
    bundle_dir: Path = DEMO_BUNDLE_DIR


class ScopeSettings(_Section):
    """What this site counts as a thyroid study: the scope gate's rules (imaging.scope).

    Patterns are regular expressions (case-insensitive, matched anywhere) per
    attribute: BodyPartExamined, StudyDescription, ProtocolName,
    RequestedProcedureDescription, ExamType (Image Type value 3). An image
    matching a deny pattern is not assessed; an attribute with allow patterns
    must match one of them when it holds a value.
    """

    modalities: list[str] = Field(default_factory=lambda: ["US"], min_length=1)
    allow: dict[str, list[str]] = Field(default_factory=dict)
    # Added to the built-in patterns of clearly non-thyroid exams (imaging.scope.DEFAULT_DENY).
    deny: dict[str, list[str]] = Field(default_factory=dict)
    # False: only this site's deny patterns apply.
    default_deny: bool = True

    @model_validator(mode="after")
    def _check_patterns(self) -> Self:
        self.rules()  # raises ValueError naming a bad attribute or pattern
        return self

    def rules(self) -> ScopeRules:
        """The rules the intake stage applies."""
        return ScopeRules.from_mapping(self.model_dump())


class ReportSettings(_Section):
    """What the report stage makes besides the SR and the heatmap secondary captures."""

    # Also a DICOM SEG of the nodule and thyroid masks.
    segmentation: bool = False
    # A failed job sends a short SR that says the analysis failed and why.
    failure_report: bool = True
    # A job whose segmenter found no nodule sends a short SR that says so.
    no_nodule_report: bool = True
    # A study the scope gate did not assess sends a short SR that says why.
    not_assessed_report: bool = True


class DestinationTLS(_Section):
    """TLS towards one destination (client side)."""

    enabled: bool = False
    ca_file: Path | None = None  # verify the peer against this CA (system CAs when unset)
    cert_file: Path | None = None  # client certificate, when the peer asks for one
    key_file: Path | None = None


class _DestinationBase(_Section):
    """What every export destination has, whatever its kind.

    Each kind adds its own fields and ``returns_to(calling_ae)``: whether a study
    sent by that AE gets its results back there (return to sender).
    """

    name: str = Field(min_length=1, max_length=64)
    # Send every job's results here, whoever sent the study.
    always: bool = False


class DimseDestination(_DestinationBase):
    """A DICOM AE the results are sent to by C-STORE (``kind = "dimse"``, the default)."""

    kind: Literal["dimse"] = "dimse"
    ae_title: str
    host: str
    port: int = Field(ge=1, le=65535)
    tls: DestinationTLS = Field(default_factory=DestinationTLS)

    _check_ae = field_validator("ae_title")(_check_ae_title)

    def returns_to(self, calling_ae: str) -> bool:
        """Whether ``calling_ae`` is this AE."""
        return self.ae_title == calling_ae.strip()


class Secret(_Section):
    """A secret given inline, by the name of an environment variable, or as a file.

    Exactly one of ``value``, ``env`` or ``file`` (a file's trailing newline is dropped);
    a plain string is the value itself. Checked when the settings load, read by :meth:`reveal`.
    """

    value: SecretStr | None = None
    env: str | None = Field(None, min_length=1)
    file: Path | None = None

    @model_validator(mode="before")
    @classmethod
    def _plain_string_is_the_value(cls, data: Any) -> Any:
        return {"value": data} if isinstance(data, str) else data

    @model_validator(mode="after")
    def _exactly_one_present(self) -> Self:
        given = [f for f in ("value", "env", "file") if getattr(self, f) is not None]
        if len(given) != 1:
            raise ValueError("give exactly one of value, env (a variable name) or file")
        if self.env is not None and not os.environ.get(self.env):
            raise ValueError(f"environment variable {self.env} is not set")
        if self.file is not None and not self.file.is_file():
            raise ValueError(f"secret file not found: {self.file}")
        return self

    def reveal(self) -> str:
        """The secret itself.

        Raises
        ------
        OSError
            If its environment variable is no longer set or its file cannot be read.
        """
        if self.value is not None:
            return self.value.get_secret_value()
        if self.env is not None:
            value = os.environ.get(self.env)
            if not value:
                raise OSError(f"environment variable {self.env} is not set")
            return value
        assert self.file is not None  # the validator saw to it
        return self.file.read_text(encoding="utf-8").rstrip("\r\n")


class NoAuth(_Section):
    """No credentials (``type = "none"``, the default)."""

    type: Literal["none"] = "none"


class BasicAuth(_Section):
    """HTTP Basic authentication (``type = "basic"``): a user name and a password."""

    type: Literal["basic"]
    username: str = Field(min_length=1)
    password: Secret


class BearerAuth(_Section):
    """A bearer token in the ``Authorization`` header (``type = "bearer"``)."""

    type: Literal["bearer"]
    token: Secret


HttpAuth = Annotated[NoAuth | BasicAuth | BearerAuth, Field(discriminator="type")]


class HttpTLS(_Section):
    """TLS towards an ``https://`` destination; the server is always verified."""

    ca_file: Path | None = None  # PEM CA bundle to verify the server (system CAs when unset)
    cert_file: Path | None = None  # client certificate (PEM), when the server asks for one
    key_file: Path | None = None  # its unencrypted private key (PEM)

    @model_validator(mode="after")
    def _files_present(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("a client certificate needs both tls.cert_file and tls.key_file")
        _require_tls_files(self.ca_file, self.cert_file, self.key_file)
        return self


class DicomWebDestination(_DestinationBase):
    """A DICOMweb service the results are stored to by STOW-RS (``kind = "dicomweb"``)."""

    kind: Literal["dicomweb"]
    # The service root, e.g. http://pacs:8042/dicom-web (STOW-RS posts to <url>/studies).
    url: str
    # The AE title the PACS behind this service sends studies from: their results come back
    # here (return to sender). Unset: only ``always`` sends results here.
    ae_title: str | None = None
    auth: HttpAuth = Field(default_factory=NoAuth)
    tls: HttpTLS = Field(default_factory=HttpTLS)
    # Seconds to connect, and to wait for each answer, per request.
    timeout_s: float = Field(30.0, gt=0)

    @field_validator("ae_title")
    @classmethod
    def _check_ae(cls, value: str | None) -> str | None:
        return None if value is None else _check_ae_title(value)

    @field_validator("url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url {value!r} must be http:// or https:// with a host name")
        if parts.username is not None or parts.password is not None:
            raise ValueError("put credentials in auth, not in the url")
        if parts.query or parts.fragment:
            raise ValueError(f"url {value!r} must be the service root, without ? or #")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _tls_needs_https(self) -> Self:
        tls_set = self.tls != HttpTLS()
        if tls_set and urlsplit(self.url).scheme != "https":
            raise ValueError("tls settings need an https:// url")
        return self

    def returns_to(self, calling_ae: str) -> bool:
        """Whether ``calling_ae`` is the AE title of the PACS behind this service."""
        return self.ae_title is not None and self.ae_title == calling_ae.strip()


def _destination_kind(value: Any) -> str:
    """The tag of a destination table: its ``kind``, ``dimse`` when it names none."""
    kind = value.get("kind", "dimse") if isinstance(value, dict) else getattr(value, "kind", None)
    return str(kind or "dimse")


# An export destination: a union tagged by ``kind``, one variant per kind, each delivered by
# its module in dicom_node/network/senders/ (docs/ARCHITECTURE.md says how to add a kind).
Destination = Annotated[
    Annotated[DimseDestination, Tag("dimse")] | Annotated[DicomWebDestination, Tag("dicomweb")],
    Discriminator(_destination_kind),
]


class ExportSettings(_Section):
    """Where results go and how hard the node tries."""

    destinations: list[Destination] = Field(default_factory=list)
    # Results of a study go back to the destination whose AE title is the study's calling AE.
    return_to_sender: bool = True
    # The node's AE title when it calls a destination (default: dicom.ae_title).
    calling_ae_title: str | None = None
    # Attempts per object and destination before the export is dead.
    max_attempts: int = Field(8, ge=1)
    # Wait before attempt n + 1 is min(initial_backoff_s * 2 ** (n - 1), max_backoff_s).
    initial_backoff_s: float = Field(5.0, ge=0)
    max_backoff_s: float = Field(600.0, ge=0)
    # How often the exporter looks for due exports.
    poll_seconds: float = Field(1.0, gt=0)

    @field_validator("destinations")
    @classmethod
    def _unique_names(cls, destinations: list[Destination]) -> list[Destination]:
        names = [d.name for d in destinations]
        if len(set(names)) != len(names):
            raise ValueError("export destination names must be unique")
        return destinations

    def destinations_for(self, calling_ae: str) -> tuple[str, ...]:
        """Names of the destinations for a study sent by ``calling_ae``, in configured order."""
        return tuple(
            d.name
            for d in self.destinations
            if d.always or (self.return_to_sender and d.returns_to(calling_ae))
        )

    def destination(self, name: str) -> Destination:
        """The destination called ``name``.

        Raises
        ------
        KeyError
            If no destination has that name (e.g. removed from the configuration).
        """
        for d in self.destinations:
            if d.name == name:
                return d
        raise KeyError(name)


class ApiToken(_Section):
    """An admin API token: who holds it, and the SHA-256 of the token (never the token)."""

    name: str = Field(min_length=1, max_length=64)  # shown in the audit trail
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$")


class ApiTLSSettings(_Section):
    """HTTPS for the admin API and dashboard."""

    cert_file: Path | None = None
    key_file: Path | None = None

    @property
    def enabled(self) -> bool:
        """Whether both files are set."""
        return self.cert_file is not None and self.key_file is not None

    @model_validator(mode="after")
    def _both_or_none(self) -> Self:
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("api.tls needs both cert_file and key_file")
        for path in (self.cert_file, self.key_file):
            if path is not None and not path.is_file():
                raise ValueError(f"TLS file not found: {path}")
        return self


class ApiSettings(_Section):
    """The admin REST API and dashboard that ``serve`` runs beside the DICOM listener."""

    enabled: bool = True
    host: str = "127.0.0.1"  # loopback by default
    port: int = Field(8080, ge=0, le=65535)  # 0: a free port (tests)
    # Tokens that may call everything but /health; none: only /health answers.
    tokens: list[ApiToken] = Field(default_factory=list)
    tls: ApiTLSSettings = Field(default_factory=ApiTLSSettings)
    # A non-loopback host needs tls, unless a TLS-terminating proxy in front is vouched for.
    behind_tls_proxy: bool = False
    # Minutes a dashboard login lasts (a server-side session, revoked at logout).
    session_minutes: float = Field(480.0, gt=0)
    # Serve the OpenAPI schema at /openapi.json (to callers with a token); no /docs page.
    openapi: bool = False

    @model_validator(mode="after")
    def _refuse_plain_http_off_loopback(self) -> Self:
        is_loopback = self.host in ("localhost",) or _is_loopback(self.host)
        if self.enabled and not is_loopback and not self.tls.enabled and not self.behind_tls_proxy:
            raise ValueError(
                f"the admin API on {self.host} would send tokens in clear text; set "
                "api.tls.cert_file and key_file (or api.behind_tls_proxy = true when a "
                "TLS-terminating proxy is the only way in)"
            )
        return self


class RetentionSettings(_Section):
    """How long the node keeps what it no longer needs (``llnm-node purge`` applies it).

    Days after a study's (or job's) results were delivered: every job ended and no
    result object still waiting to be sent. Quarantined files count from when they
    were refused.
    """

    originals_days: float = Field(7.0, ge=0)  # the instances as received (PHI)
    work_days: float = Field(30.0, ge=0)  # a job's folder: de-identified copies, results
    quarantine_days: float = Field(30.0, ge=0)  # refused instances (PHI)


class Settings(BaseSettings):
    """Everything the node reads from its configuration."""

    model_config = SettingsConfigDict(
        env_prefix="LLNM_",
        env_nested_delimiter="__",
        extra="forbid",
    )

    # Root of the node's own files: spool, quarantine, work folders.
    data_dir: Path = Path("llnm-data")
    # SQLAlchemy URL; empty means SQLite at <data_dir>/llnm.db.
    database_url: str = ""
    # Below this much free space on the spool's file system, new associations are
    # turned away and instances answered with 0xA700 (keep it above the largest instance).
    min_free_disk_mb: float = Field(500.0, ge=0)
    log_level: str = "INFO"
    dicom: DicomSettings = Field(default_factory=DicomSettings)
    completion: CompletionSettings = Field(default_factory=CompletionSettings)
    executor: ExecutorSettings = Field(default_factory=ExecutorSettings)
    model: ModelSettings = Field(default_factory=ModelSettings)
    report: ReportSettings = Field(default_factory=ReportSettings)
    scope: ScopeSettings = Field(default_factory=ScopeSettings)
    export: ExportSettings = Field(default_factory=ExportSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    retention: RetentionSettings = Field(default_factory=RetentionSettings)

    @field_validator("log_level")
    @classmethod
    def _check_level(cls, value: str) -> str:
        value = value.upper()
        if value not in ("DEBUG", "INFO", "WARNING", "ERROR"):
            raise ValueError("log_level must be DEBUG, INFO, WARNING or ERROR")
        return value

    @property
    def resolved_database_url(self) -> str:
        """The database URL, defaulting to the SQLite file in the data folder."""
        return self.database_url or f"sqlite:///{self.data_dir.resolve() / 'llnm.db'}"

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Keyword arguments, then environment, then the TOML file."""
        return (init_settings, env_settings, TomlConfigSettingsSource(settings_cls))


def load_settings(config_file: Path | None = None, **overrides: Any) -> Settings:
    """Read settings from ``config_file`` (or ``$LLNM_CONFIG``) and the environment.

    Raises
    ------
    FileNotFoundError
        If a configuration file is named but does not exist.
    pydantic.ValidationError
        If a value is invalid or a setting is insecure.
    """
    if config_file is None and os.environ.get(CONFIG_ENV_VAR):
        config_file = Path(os.environ[CONFIG_ENV_VAR])
    if config_file is None:
        return Settings(**overrides)
    if not config_file.is_file():
        raise FileNotFoundError(f"configuration file not found: {config_file}")

    class FileSettings(Settings):
        model_config = SettingsConfigDict(toml_file=config_file)

    return FileSettings(**overrides)

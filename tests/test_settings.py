import os
from pathlib import Path

import pytest
from harness import write_toml
from pydantic import ValidationError

from dicom_node.settings import (
    AllowedCaller,
    BasicAuth,
    BearerAuth,
    CompletionSettings,
    DicomSettings,
    DicomWebDestination,
    ExportSettings,
    NoAuth,
    load_settings,
)


def test_defaults_are_embedded_and_loopback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("LLNM_CONFIG", raising=False)
    settings = load_settings()
    assert settings.dicom.host == "127.0.0.1"
    assert settings.resolved_database_url == f"sqlite:///{tmp_path / 'llnm-data' / 'llnm.db'}"
    assert settings.completion.quiet_seconds == 30


def test_toml_then_environment_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_toml(
        tmp_path / "node.toml",
        {
            "data_dir": "/srv/llnm",
            "dicom": {"port": 4000, "ae_title": "NODE_A"},
            "completion": {"quiet_seconds": 12},
        },
    )
    monkeypatch.setenv("LLNM_DICOM__PORT", "5000")
    settings = load_settings(config)
    assert settings.dicom.port == 5000  # environment beats the file
    assert settings.dicom.ae_title == "NODE_A"
    assert settings.completion.quiet_seconds == 12
    assert settings.data_dir == Path("/srv/llnm")


def test_config_from_environment_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = write_toml(tmp_path / "node.toml", {"dicom": {"port": 4100}})
    monkeypatch.setenv("LLNM_CONFIG", str(config))
    assert load_settings().dicom.port == 4100


def test_missing_file_and_unknown_keys_are_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "absent.toml")
    config = write_toml(tmp_path / "typo.toml", {"dicom": {"prot": 4000}})
    with pytest.raises(ValidationError, match="prot"):
        load_settings(config)


def test_open_listener_without_allow_list_is_refused() -> None:
    with pytest.raises(ValidationError, match="allowed_callers"):
        DicomSettings(host="0.0.0.0")
    DicomSettings(host="0.0.0.0", accept_any_caller=True)
    DicomSettings(host="0.0.0.0", allowed_callers=[AllowedCaller(ae_title="PACS")])


def test_listener_processes_default_to_the_cores() -> None:
    assert DicomSettings().processes == (os.cpu_count() or 1)
    assert DicomSettings(listener_processes=1).processes == 1
    with pytest.raises(ValidationError):
        DicomSettings(listener_processes=0)


def test_allow_list_with_hosts() -> None:
    settings = DicomSettings(
        host="0.0.0.0",
        allowed_callers=[
            AllowedCaller(ae_title="PACS", hosts=["10.1.2.0/24"]),
            AllowedCaller(ae_title="MODALITY"),
        ],
    )
    assert settings.admits("PACS", "10.1.2.7")
    assert not settings.admits("PACS", "10.1.3.7")
    assert settings.admits("MODALITY", "192.0.2.1")
    assert not settings.admits("OTHER", "10.1.2.7")


@pytest.mark.parametrize("title", ["", "A" * 17, "BAD\\AE"])
def test_bad_ae_titles(title: str) -> None:
    with pytest.raises(ValidationError):
        DicomSettings(ae_title=title)


def test_tls_needs_existing_files(tmp_path: Path) -> None:
    with pytest.raises(ValidationError, match="cert_file"):
        DicomSettings(tls={"enabled": True})
    with pytest.raises(ValidationError, match="not found"):
        DicomSettings(
            tls={"enabled": True, "cert_file": tmp_path / "c.pem", "key_file": tmp_path / "k.pem"}
        )


def _dicomweb(**values: object) -> dict[str, object]:
    return {"name": "viewer", "kind": "dicomweb", "url": "http://pacs:8042/dicom-web", **values}


def test_dicomweb_destination_from_toml(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("ca.pem", "client.pem", "client.key"):
        (tmp_path / name).write_text("PEM")
    monkeypatch.setenv("PACS_PASSWORD", "pw")
    destination = _dicomweb(
        url="https://pacs.example.org/dicom-web/",
        ae_title="PACS",
        timeout_s=5,
        auth={"type": "basic", "username": "llnm", "password": {"env": "PACS_PASSWORD"}},
        tls={
            "ca_file": tmp_path / "ca.pem",
            "cert_file": tmp_path / "client.pem",
            "key_file": tmp_path / "client.key",
        },
    )
    config = write_toml(tmp_path / "node.toml", {"export": {"destinations": [destination]}})
    [loaded] = load_settings(config).export.destinations
    assert isinstance(loaded, DicomWebDestination)
    assert (loaded.url, loaded.timeout_s) == ("https://pacs.example.org/dicom-web", 5)
    assert isinstance(loaded.auth, BasicAuth) and loaded.auth.password.reveal() == "pw"
    assert load_settings(config).export.destinations_for("PACS") == ("viewer",)
    monkeypatch.delenv("PACS_PASSWORD")
    with pytest.raises(OSError, match="PACS_PASSWORD is not set"):
        loaded.auth.password.reveal()


def test_dicomweb_destination_defaults_and_inline_secrets() -> None:
    plain = ExportSettings(destinations=[_dicomweb()]).destinations[0]
    assert isinstance(plain, DicomWebDestination) and isinstance(plain.auth, NoAuth)
    assert not plain.returns_to("PACS")  # no AE title: only `always` sends results there
    bearer = DicomWebDestination.model_validate(_dicomweb(auth={"type": "bearer", "token": "t"}))
    assert isinstance(bearer.auth, BearerAuth) and bearer.auth.token.reveal() == "t"
    assert "'t'" not in repr(bearer)


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ({"url": "ftp://pacs/dicom-web"}, "must be http:// or https://"),
        ({"url": "http:///dicom-web"}, "with a host name"),
        ({"url": "https://u:p@pacs/dicom-web"}, "credentials in auth"),
        ({"url": "http://pacs/dicom-web?x=1"}, "service root"),
        ({"tls": {"ca_file": "/etc/hostname"}}, "need an https:// url"),
        ({"url": "https://pacs", "tls": {"cert_file": "/etc/hostname"}}, "cert_file and tls.key"),
        ({"url": "https://pacs", "tls": {"ca_file": "/absent.pem"}}, "TLS file not found"),
        ({"auth": {"type": "basic", "username": "u", "password": {}}}, "exactly one of"),
        (
            {"auth": {"type": "basic", "username": "u", "password": {"value": "a", "env": "B"}}},
            "exactly one of",
        ),
        ({"auth": {"type": "bearer", "token": {"env": "LLNM_TEST_UNSET"}}}, "is not set"),
        ({"auth": {"type": "bearer", "token": {"file": "/absent"}}}, "secret file not found"),
        ({"auth": {"type": "oauth"}}, "does not match any of the expected tags"),
        ({"ae_title": "BAD\\AE"}, "AE title"),
        ({"timeout_s": 0}, "greater than 0"),
        ({"host": "pacs"}, "Extra inputs are not permitted"),
    ],
)
def test_dicomweb_destination_errors(values: dict[str, object], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ExportSettings(destinations=[_dicomweb(**values)])


def test_query_callers_one_entry_per_calling_ae() -> None:
    pacs = {"ae_title": "PACS", "host": "10.1.2.3", "port": 104}
    settings = CompletionSettings(query_callers=[pacs, {**pacs, "ae_title": "PACS2"}])
    caller = settings.query_caller("PACS ")  # as the association names it, padded
    assert caller is not None and (caller.host, caller.called_ae_title) == ("10.1.2.3", None)
    assert settings.query_caller("OTHER") is None
    with pytest.raises(ValidationError, match="twice"):
        CompletionSettings(query_callers=[pacs, pacs])
    with pytest.raises(ValidationError, match="AE title"):
        CompletionSettings(query_callers=[{**pacs, "called_ae_title": "BAD\\AE"}])

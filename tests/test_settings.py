from pathlib import Path

import pytest
from harness import write_toml
from pydantic import ValidationError

from dicom_node.settings import AllowedCaller, DicomSettings, load_settings


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

from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from devices.ca import key_pem, write_private
from healthiot import stack
from healthiot.errors import SettingsError
from healthiot.settings import accepted_variables, load

README = Path(__file__).resolve().parents[2] / "README.md"


def test_every_setting_is_documented_in_the_readme():
    text = README.read_text()
    missing = sorted(v for v in accepted_variables() if f"`{v}`" not in text)
    assert missing == []


def test_a_misspelt_setting_is_refused_rather_than_ignored():
    with pytest.raises(SettingsError, match="HEALTHIOT_API_PRT"):
        load({"HEALTHIOT_API_PRT": "1"})


def test_production_refuses_to_start_without_explicit_secrets():
    with pytest.raises(SettingsError, match="HEALTHIOT_KEK_FILE"):
        load({"HEALTHIOT_ENVIRONMENT": "production",
              "HEALTHIOT_DATABASE_URL": "postgresql://app@db/healthiot"})


def test_a_secret_is_read_from_its_file(tmp_path):
    secret = tmp_path / "pw"
    secret.write_text("s3cret-from-file\n")
    settings = load({"HEALTHIOT_DATABASE_PASSWORD_FILE": str(secret),
                     "HEALTHIOT_API_PORT": "9443"})
    assert settings.database_password == "s3cret-from-file"
    assert settings.api_port == 9443
    assert "s3cret" not in repr(settings)


def test_a_non_integer_port_is_a_clear_error():
    with pytest.raises(SettingsError, match="HEALTHIOT_MQTT_PORT must be an integer"):
        load({"HEALTHIOT_MQTT_PORT": "eighty"})


def test_the_record_feed_and_sign_in_settings_are_checked_together():
    with pytest.raises(SettingsError, match="SENDER_OID"):
        load({"HEALTHIOT_RECORD_FEED_URL": "https://record.example/fhir"})
    with pytest.raises(SettingsError, match="go together"):
        load({"HEALTHIOT_OIDC_ISSUER": "https://auth.example"})
    with pytest.raises(SettingsError, match="https only"):
        load({"HEALTHIOT_ENVIRONMENT": "production", "HEALTHIOT_KEK_FILE": "k",
              "HEALTHIOT_DATABASE_URL": "postgresql://app@db/h", "HEALTHIOT_DATABASE_PASSWORD": "p",
              "HEALTHIOT_MQTT_KEY_FILE": "k", "HEALTHIOT_API_KEY_FILE": "k",
              "HEALTHIOT_JWT_KEY_FILE": "k", "HEALTHIOT_RECORD_FEED_URL": "http://x/fhir",
              "HEALTHIOT_RECORD_FEED_SENDER_OID": "1.2.3", "HEALTHIOT_RECORD_CLIENT_SECRET": "s",
              **_RECORD})


_RECORD = {"HEALTHIOT_RECORD_FEED_MODELS_FILE": "models.json",
           "HEALTHIOT_RECORD_ISSUER": "https://auth.record.example",
           "HEALTHIOT_RECORD_CLIENT_ID": "healthiot",
           "HEALTHIOT_RECORD_REDIRECT_URI": "https://api.example/v1/record-link/callback"}


def test_the_feed_needs_its_registration_and_no_default_secret() -> None:
    """Nothing of the feed works on defaults: without the client secret our registration
    with the record gave, the feed refuses to start."""
    feed = {"HEALTHIOT_RECORD_FEED_URL": "https://record.example/fhir",
            "HEALTHIOT_RECORD_FEED_SENDER_OID": "1.2.250.1.999.1"}
    with pytest.raises(SettingsError, match="HEALTHIOT_RECORD_CLIENT_SECRET"):
        load({**feed, **_RECORD})
    with pytest.raises(SettingsError, match="HEALTHIOT_RECORD_ISSUER"):
        load({**feed, "HEALTHIOT_RECORD_CLIENT_SECRET": "s"})
    settings = load({**feed, **_RECORD, "HEALTHIOT_RECORD_CLIENT_SECRET": "from-registration"})
    assert "from-registration" not in repr(settings)


def test_other_jwt_keys_verify_and_are_published(tmp_path: Path) -> None:

    current, previous, following = (ec.generate_private_key(ec.SECP256R1()) for _ in range(3))
    write_private(tmp_path / "current.key", key_pem(current))
    write_private(tmp_path / "previous.key", key_pem(previous))  # a private PEM
    (tmp_path / "next.pem").write_bytes(following.public_key().public_bytes(  # a public PEM
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    config = load({"HEALTHIOT_JWT_OTHER_KEY_FILES":
                            f"{tmp_path / 'previous.key'}, {tmp_path / 'next.pem'}"})
    service = stack.token_service(config, tmp_path / "current.key")
    keys = service.jwks()["keys"]
    assert len(keys) == 3 and not any("d" in k for k in keys)  # never a private part
    old = stack.token_service(load({}), tmp_path / "previous.key")
    token = old.issue("patient-1", methods=["pwd", "otp"])
    assert service.verify(token).subject == "patient-1"


def test_production_names_the_audit_key_and_the_database_administrator_password():
    with pytest.raises(SettingsError) as refused:
        load({"HEALTHIOT_ENVIRONMENT": "production",
              "HEALTHIOT_DATABASE_URL": "postgresql://healthiot_service@db/healthiot"})
    assert "HEALTHIOT_AUDIT_KEY_FILE" in str(refused.value)
    assert "HEALTHIOT_DATABASE_ADMIN_PASSWORD" in str(refused.value)

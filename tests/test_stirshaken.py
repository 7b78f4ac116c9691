"""STIR/SHAKEN: verstat reading and PASSporT verification, with a throwaway PKI made by cryptography.

Nothing here reaches the network: certificates come from Pki.fetcher, and urlopen is made to fail.
The end-to-end cases (through the socket) are in test_screening.py, which imports Pki from here.
"""

from __future__ import annotations

import datetime as dt
import time
import urllib.request
from pathlib import Path

import gevent
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID, ObjectIdentifier

from fsguard.rules import stirshaken
from fsguard.rules.stirshaken import StirResult, Verifier, from_verstat, read_verstat, sign_passport

#: the SHAKEN certificate's TNAuthList extension (RFC 8226), here with an SPC of 1234
TN_AUTH_LIST = x509.UnrecognizedExtension(ObjectIdentifier("1.3.6.1.5.5.7.1.26"), bytes.fromhex("3008a00616043132333435"))


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "fsguard tests"),
                      x509.NameAttribute(NameOID.COMMON_NAME, cn)])


def _cert(subject: str, key, issuer: str, issuer_key, *, ca: bool, days: tuple[int, int] = (-1, 365),
          tn_auth: bool = False) -> x509.Certificate:
    now = dt.datetime.now(dt.timezone.utc)
    usage = dict(digital_signature=not ca, content_commitment=False, key_encipherment=False, data_encipherment=False,
                 key_agreement=False, key_cert_sign=ca, crl_sign=ca, encipher_only=False, decipher_only=False)
    builder = (x509.CertificateBuilder().subject_name(_name(subject)).issuer_name(_name(issuer))
               .public_key(key.public_key()).serial_number(x509.random_serial_number())
               .not_valid_before(now + dt.timedelta(days=days[0])).not_valid_after(now + dt.timedelta(days=days[1]))
               .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(**usage), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_key.public_key()),
                              critical=False))
    if tn_auth:
        builder = builder.add_extension(TN_AUTH_LIST, critical=False)
    return builder.sign(issuer_key, hashes.SHA256())


def _pem(*certs: x509.Certificate) -> bytes:
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in certs)


class Pki:
    """An STI-CA root, an intermediate, and a service provider's SHAKEN certificate served at ``url``.

    ``fetcher`` plays the certificate repository; it records every URL asked for.
    """

    def __init__(self, name: str = "Test STI-CA", *, leaf_days: tuple[int, int] = (-1, 365)) -> None:
        self.root_key = ec.generate_private_key(ec.SECP256R1())
        self.root = _cert(f"{name} Root", self.root_key, f"{name} Root", self.root_key, ca=True)
        self.inter_key = ec.generate_private_key(ec.SECP256R1())
        self.inter = _cert(f"{name} Intermediate", self.inter_key, f"{name} Root", self.root_key, ca=True)
        self.key = ec.generate_private_key(ec.SECP256R1())
        self.leaf = _cert("SHAKEN 1234", self.key, f"{name} Intermediate", self.inter_key, ca=False,
                          days=leaf_days, tn_auth=True)
        self.url = "https://cert.example.test/sp-1234.pem"
        self.repository: dict[str, bytes] = {self.url: _pem(self.leaf, self.inter)}
        self.fetched: list[str] = []
        self.delay = 0.0

    def fetcher(self, url: str, timeout: float) -> bytes:
        self.fetched.append(url)
        if self.delay:
            gevent.sleep(self.delay)
        if url not in self.repository:
            raise OSError(f"connection refused: {url}")
        return self.repository[url]

    def trust_store(self, directory: Path) -> Path:
        path = directory / f"sti-ca-{id(self)}.pem"
        path.write_bytes(_pem(self.root))
        return path

    def identity(self, orig_tn: str = "12125550147", *, attest: str = "A", dest_tn: str = "18005550100",
                 iat: int | None = None, key=None, x5u: str | None = None, **kwargs) -> str:
        return sign_passport(key or self.key, orig_tn=orig_tn, dest_tn=dest_tn, attest=attest,
                             x5u=x5u or self.url, iat=iat, **kwargs)


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
    """A test that forgets to hand in a fetcher fails instead of going out to the network."""
    def refuse(*args, **kwargs):
        raise AssertionError("a test tried to reach the network")
    monkeypatch.setattr(urllib.request, "urlopen", refuse)


@pytest.fixture
def pki() -> Pki:
    return Pki()


@pytest.fixture
def verifier(pki: Pki) -> Verifier:
    return Verifier([pki.root], fetcher=pki.fetcher, max_age=60)


# ------------------------------------------------------------------ valid PASSporTs


@pytest.mark.parametrize("attest", ["A", "B", "C"])
def test_a_valid_passport_passes_with_its_attestation(pki, verifier, attest):
    result = verifier.verify(pki.identity(attest=attest), "+12125550147")
    assert (result.status, result.attestation, result.failure, result.source) == ("passed", attest, "", "identity")
    assert result.outcome == attest and result.code == f"stir.{attest}"
    assert result.details["x5u"] == pki.url and result.details["origid"] == "fsguard-test"


def test_certificates_are_fetched_once_and_cached(pki, verifier):
    for _ in range(3):
        assert verifier.verify(pki.identity(), "+12125550147").status == "passed"
    assert pki.fetched == [pki.url]


def test_concurrent_calls_with_one_x5u_wait_for_one_fetch(pki, verifier):
    pki.delay = 0.05
    results = [g.get() for g in gevent.joinall(
        [gevent.spawn(verifier.verify, pki.identity(), "+12125550147") for _ in range(20)])]
    assert all(r.status == "passed" for r in results)
    assert pki.fetched == [pki.url]


def test_orig_tn_is_compared_in_e164(pki, verifier):
    # E.164 without '+', with '+', and a national form some signers send: all the same caller
    for tn in ("12125550147", "+12125550147", "2125550147"):
        assert verifier.verify(pki.identity(tn), "+12125550147").status == "passed", tn
    # ...but a number that merely ends with the same digits is another caller
    result = verifier.verify(pki.identity("442125550147"), "+12125550147")
    assert (result.status, result.failure) == ("failed", "tn_mismatch")


def test_a_uk_caller_is_matched_as_an_international_number(pki, verifier):
    assert verifier.verify(pki.identity("442079460000"), "+442079460000").status == "passed"


# ------------------------------------------------------------------ each failure has its own code


def test_a_signature_by_another_key_is_a_bad_signature(pki, verifier):
    forged = pki.identity(key=ec.generate_private_key(ec.SECP256R1()))
    result = verifier.verify(forged, "+12125550147")
    assert (result.status, result.failure, result.code) == ("failed", "bad_signature", "stir.bad_signature")
    assert result.attestation == "A"   # what it claimed, kept for the record


def test_tampered_claims_break_the_signature(pki, verifier):
    token = pki.identity(attest="C")
    header, claims, rest = token.split(".", 2)
    better = stirshaken._b64url_encode(stirshaken._b64url(claims).replace(b'"attest":"C"', b'"attest":"A"'))
    result = verifier.verify(f"{header}.{better}.{rest}", "+12125550147")
    assert result.failure == "bad_signature"


@pytest.mark.parametrize("offset", [-120, 120])
def test_an_old_or_future_iat_is_stale(pki, verifier, offset):
    result = verifier.verify(pki.identity(iat=int(time.time()) + offset), "+12125550147")
    assert (result.status, result.failure) == ("failed", "stale_iat")
    assert "60 s" in result.reason
    assert pki.fetched == []   # cheap checks first: no fetch for a replayed token


def test_a_passport_for_another_number_is_a_tn_mismatch(pki, verifier):
    result = verifier.verify(pki.identity("13125550100"), "+12125550147")
    assert (result.status, result.failure) == ("failed", "tn_mismatch")
    assert verifier.verify(pki.identity(), None).failure == "tn_mismatch"


def test_a_certificate_from_another_ca_is_untrusted(pki):
    other = Pki("Rogue CA")
    verifier = Verifier([pki.root], fetcher=other.fetcher)
    result = verifier.verify(other.identity(), "+12125550147")
    assert (result.status, result.failure) == ("failed", "untrusted_cert")


def test_a_leaf_without_its_intermediate_is_untrusted(pki):
    pki.repository[pki.url] = _pem(pki.leaf)
    result = Verifier([pki.root], fetcher=pki.fetcher).verify(pki.identity(), "+12125550147")
    assert result.failure == "untrusted_cert"


def test_an_expired_certificate(pki):
    old = Pki(leaf_days=(-400, -10))
    result = Verifier([old.root], fetcher=old.fetcher).verify(old.identity(), "+12125550147")
    assert result.failure == "cert_expired"


def test_an_unreachable_certificate_is_unavailable_and_not_asked_for_again_at_once(pki, verifier):
    pki.repository.clear()
    for _ in range(3):
        result = verifier.verify(pki.identity(), "+12125550147")
        assert (result.status, result.failure) == ("failed", "cert_unavailable")
    assert pki.fetched == [pki.url]


def test_garbage_at_x5u_is_a_bad_certificate(pki, verifier):
    pki.repository[pki.url] = b"<html>not found</html>"
    assert verifier.verify(pki.identity(), "+12125550147").failure == "bad_cert"


def test_x5u_must_be_https_and_match_info(pki, verifier):
    http = pki.identity(x5u="http://cert.example.test/sp.pem")
    assert verifier.verify(http, "+12125550147").failure == "bad_x5u"
    token, _, _ = pki.identity().partition(";")
    mismatched = f"{token};info=<https://elsewhere.example/x.pem>;alg=ES256;ppt=shaken"
    assert verifier.verify(mismatched, "+12125550147").failure == "bad_x5u"
    assert pki.fetched == []


@pytest.mark.parametrize("header, failure", [
    ("not a passport", "malformed"),
    ("a.b", "malformed"),
    ("eyJhbGciOiJFUzI1NiJ9..c2ln;info=<https://x/y>", "malformed"),   # compact form
    ("!!!.@@@.###", "malformed"),
])
def test_unreadable_identity_headers(verifier, header, failure):
    assert verifier.verify(header, "+12125550147").failure == failure


def test_wrong_alg_ppt_attest_and_missing_claims(pki, verifier):
    assert verifier.verify(pki.identity(alg="RS256"), "+12125550147").failure == "bad_alg"
    assert verifier.verify(pki.identity(ppt="div"), "+12125550147").failure == "bad_ppt"
    assert verifier.verify(pki.identity(attest="D"), "+12125550147").failure == "bad_attest"
    token = sign_passport(pki.key, orig_tn="12125550147", dest_tn="18005550100", attest="A", x5u=pki.url,
                          extra_claims={"origid": None})
    header, claims, sig = token.split(";")[0].split(".")
    import json

    data = json.loads(stirshaken._b64url(claims))
    del data["origid"]
    stripped = f"{header}.{stirshaken._b64url_encode(json.dumps(data).encode())}.{sig}"
    assert verifier.verify(stripped, "+12125550147").failure == "missing_claim"


def test_every_failure_code_is_documented():
    assert {"bad_signature", "stale_iat", "tn_mismatch", "untrusted_cert", "cert_expired", "cert_unavailable",
            "malformed", "carrier_failed"} <= set(stirshaken.FAILURE_CODES)


# ------------------------------------------------------------------ what is already on the channel


def test_freeswitch_own_verifier_result_is_read_with_its_level():
    found = read_verstat({"sip_verstat_detailed": "TN-Validation-Passed-B", "sip_verstat": "TN-Validation-Passed"})
    assert found == ("TN-Validation-Passed-B", "sip_verstat_detailed")
    result = from_verstat(*found)
    assert (result.status, result.attestation, result.source) == ("passed", "B", "verstat")


def test_the_carriers_verstat_in_p_asserted_identity():
    pai = "<sip:+12125550147;verstat=TN-Validation-Failed@carrier.example;user=phone>"
    found = read_verstat({"sip_P-Asserted-Identity": pai})
    assert found == ("TN-Validation-Failed", "sip_P-Asserted-Identity")
    result = from_verstat(*found)
    assert (result.status, result.failure, result.code) == ("failed", "carrier_failed", "stir.carrier_failed")


def test_no_tn_validation_is_no_information():
    result = from_verstat("No-TN-Validation", "sip_verstat")
    assert (result.status, result.outcome) == ("none", "none")


def test_a_pass_without_a_level_takes_the_level_the_passport_claims():
    assert from_verstat("TN-Validation-Passed", "sip_verstat", attestation_hint="C").attestation == "C"
    assert from_verstat("TN-Validation-Passed", "sip_verstat").outcome == "passed"


def test_results_round_trip_for_replay(pki, verifier):
    result = verifier.verify(pki.identity(iat=int(time.time()) - 300), "+12125550147")
    again = StirResult.from_dict(result.as_dict())
    assert (again.status, again.failure, again.code, again.attestation) == ("failed", "stale_iat", "stir.stale_iat", "A")


def test_a_trust_store_directory_is_read(tmp_path, pki):
    pki.trust_store(tmp_path)
    Pki("Second CA").trust_store(tmp_path)
    assert len(stirshaken.load_trust_store(tmp_path)) == 2
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no certificates"):
        stirshaken.load_trust_store(tmp_path / "empty")

"""STIR/SHAKEN: what the network vouches for about the caller id, and checking a PASSporT ourselves.

Two sources, the first one found wins:

1. A verification result already on the channel. FreeSWITCH's own verifier (``sofia_stir_shaken_vs``)
   sets ``sip_verstat_detailed`` (``TN-Validation-Passed-A``) and ``sip_verstat``; carriers that
   verify for their customers put ``verstat=TN-Validation-Passed`` (``-Failed``, ``No-TN-Validation``)
   in the user part of P-Asserted-Identity or From.
2. Otherwise, a SIP Identity header that reached fsguard unverified (RFC 8224 / 8588, ATIS-1000074):
   ``<header>.<claims>.<signature>;info=<https://cert.example/sp.pem>;alg=ES256;ppt=shaken``.
   fsguard checks it as a verification service would: ES256 signature with the key of the
   certificate at ``x5u``, that certificate chaining to a configured CA trust store (the STI-PA's
   approved CAs), ``iat`` fresh, ``orig.tn`` equal to the caller's number (both in E.164), and an
   attestation of A, B or C. Every failure has its own code (FAILURE_CODES).

Certificates are fetched with a short timeout, only over https, at most 64 KiB, and cached with
their verification result (failures for a minute, so a dead certificate server does not slow
every call down). The fetcher is pluggable: tests hand in certificates, nothing reaches the network.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import threading
import time
import urllib.request
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Mapping

from fsguard.rules import numbers

__all__ = ["FAILURE_CODES", "StirResult", "read_verstat", "from_verstat", "find_identity", "PassportError",
           "Passport", "parse_identity", "Verifier", "load_trust_store", "fetch_url", "sign_passport"]

#: failure code -> what it means, for the operator
FAILURE_CODES: dict[str, str] = {
    "carrier_failed": "the carrier's verification failed (verstat TN-Validation-Failed)",
    "malformed": "the Identity header is not a readable PASSporT",
    "bad_alg": "the PASSporT is not signed with ES256",
    "bad_ppt": "not a SHAKEN PASSporT (ppt is not shaken)",
    "missing_claim": "a required PASSporT claim is missing",
    "bad_attest": "the attestation is not A, B or C",
    "stale_iat": "the PASSporT was signed too long ago (or in the future)",
    "tn_mismatch": "the signed calling number is not the caller's number",
    "bad_x5u": "the certificate URL is not acceptable",
    "cert_unavailable": "the certificate could not be fetched",
    "bad_cert": "the certificate could not be read",
    "cert_expired": "the certificate is not valid at this time",
    "untrusted_cert": "the certificate does not chain to a trusted STI certification authority",
    "bad_signature": "the signature does not verify with the certificate's key",
}

#: where a verstat may be found on the channel, in order of authority
VERSTAT_VARIABLES = ("sip_verstat_detailed", "sip_verstat")
VERSTAT_HEADERS = ("sip_P-Asserted-Identity", "sip_h_P-Asserted-Identity", "sip_full_from", "sip_from_user",
                   "sip_from_uri", "sip_from_params")
_VERSTAT = re.compile(r"verstat=([A-Za-z0-9-]+)", re.IGNORECASE)
MAX_CERT_BYTES = 64 * 1024


@dataclass
class StirResult:
    """The STIR/SHAKEN outcome for one call."""

    #: passed, failed or none (no STIR/SHAKEN information, or nothing fsguard could check)
    status: str = "none"
    #: A, B or C when known
    attestation: str | None = None
    #: a FAILURE_CODES key when status is failed
    failure: str = ""
    #: verstat (a verifier upstream said so) or identity (fsguard checked the PASSporT)
    source: str = ""
    reason: str = "no STIR/SHAKEN information on the call"
    details: dict[str, Any] = field(default_factory=dict)

    @property
    def outcome(self) -> str:
        """The policy key: A, B, C, passed (level unknown), failed or none."""
        if self.status == "passed":
            return self.attestation or "passed"
        return self.status

    @property
    def code(self) -> str:
        if self.status == "failed":
            return f"stir.{self.failure}"
        return f"stir.{self.outcome}"

    def as_dict(self) -> dict[str, Any]:
        return {"status": self.status, "attestation": self.attestation, "failure": self.failure,
                "source": self.source, "reason": self.reason, "details": self.details}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StirResult:
        return cls(status=data.get("status", "none"), attestation=data.get("attestation"),
                   failure=data.get("failure", ""), source=data.get("source", ""), reason=data.get("reason", ""),
                   details=dict(data.get("details") or {}))


def _failed(failure: str, source: str, detail: str = "", **details: Any) -> StirResult:
    reason = FAILURE_CODES[failure] + (f" ({detail})" if detail else "")
    return StirResult("failed", details.pop("attestation", None), failure, source, reason, details)


# ---------------------------------------------------------------- verstat on the channel


def read_verstat(variables: Mapping[str, str]) -> tuple[str, str] | None:
    """``(verstat, variable it came from)`` if an upstream verifier left one on the channel."""
    for name in VERSTAT_VARIABLES:
        value = (variables.get(name) or "").strip()
        if value:
            return value, name
    for name in VERSTAT_HEADERS:
        match = _VERSTAT.search(variables.get(name) or "")
        if match:
            return match.group(1), name
    return None


def from_verstat(value: str, where: str, attestation_hint: str | None = None) -> StirResult:
    """Read a verstat: TN-Validation-Passed[-A|-B|-C], TN-Validation-Failed[-...], No-TN-Validation."""
    low = value.strip().lower()
    details = {"verstat": value, "from": where}
    if low.startswith("tn-validation-passed"):
        level = low.rsplit("-", 1)[-1].upper() if re.search(r"-passed-[abc]\Z", low) else None
        level = level or (attestation_hint if attestation_hint in ("A", "B", "C") else None)
        text = f"attestation {level}" if level else "attestation level not given"
        return StirResult("passed", level, "", "verstat", f"caller id verified upstream ({value}; {text})", details)
    if low.startswith("tn-validation-failed"):
        return _failed("carrier_failed", "verstat", value, **details)
    return StirResult("none", None, "", "verstat", f"the network did not validate the caller id ({value})", details)


def find_identity(variables: Mapping[str, str], names: list[str] | tuple[str, ...]) -> str | None:
    for name in names:
        value = (variables.get(name) or "").strip()
        if value:
            return value
    return None


# ---------------------------------------------------------------- the PASSporT


class PassportError(Exception):
    def __init__(self, code: str, detail: str = "") -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


def _b64url(text: str) -> bytes:
    if not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


@dataclass
class Passport:
    header: dict[str, Any]
    claims: dict[str, Any]
    signing_input: bytes
    signature: bytes
    params: dict[str, str]

    @property
    def x5u(self) -> str:
        return str(self.header.get("x5u") or "")


def parse_identity(value: str) -> Passport:
    """Split an Identity header value into the PASSporT and its parameters (no checks of meaning).

    Several Identity headers joined with commas: the first SHAKEN one is used.
    """
    candidates = [v.strip() for v in value.split(",") if v.strip()]
    shaken = [c for c in candidates if "ppt=shaken" in c.replace(" ", "").lower()]
    chosen = (shaken or candidates or [""])[0]
    token, *raw_params = [p.strip() for p in chosen.split(";")]
    params: dict[str, str] = {}
    for p in raw_params:
        k, _, v = p.partition("=")
        params[k.strip().lower()] = v.strip().strip("<>\"")
    parts = token.split(".")
    if len(parts) != 3:
        raise PassportError("malformed", "expected header.claims.signature")
    if not parts[1]:
        raise PassportError("malformed", "compact form (claims left out) is not supported")
    try:
        header = json.loads(_b64url(parts[0]))
        claims = json.loads(_b64url(parts[1]))
        signature = _b64url(parts[2])
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise PassportError("malformed", f"cannot decode: {exc}") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise PassportError("malformed", "header and claims must be JSON objects")
    return Passport(header, claims, f"{parts[0]}.{parts[1]}".encode("ascii"), signature, params)


def _tn_e164(tn: Any, region: str) -> str | None:
    """A PASSporT telephone number in E.164: it is E.164 without the '+' (ATIS-1000074); a national
    form some signers send is read with the default region."""
    text = str(tn or "").strip()
    digits = text.lstrip("+")
    if not digits.isdigit():
        return None
    international = numbers.parse("+" + digits, region)
    if international.valid:
        return international.e164
    national = numbers.parse(digits, region)
    return national.e164 if national.valid else international.e164


# ---------------------------------------------------------------- certificates


Fetcher = Callable[[str, float], bytes]


def fetch_url(url: str, timeout: float) -> bytes:
    """Fetch a certificate over http(s) with a timeout and a size limit."""
    request = urllib.request.Request(url, headers={"Accept": "application/pem-certificate-chain, */*",
                                                   "User-Agent": "fsguard-stir-shaken"})
    with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 - scheme checked by the caller
        data = response.read(MAX_CERT_BYTES + 1)
    if len(data) > MAX_CERT_BYTES:
        raise ValueError(f"more than {MAX_CERT_BYTES} bytes")
    return bytes(data)


def _load_certificates(data: bytes) -> list[Any]:
    from cryptography import x509

    if b"-----BEGIN CERTIFICATE-----" in data:
        return list(x509.load_pem_x509_certificates(data))
    return [x509.load_der_x509_certificate(data)]


def load_trust_store(path: str | Path) -> list[Any]:
    """CA certificates from a PEM file or every *.pem / *.crt / *.cer file of a directory."""
    p = Path(path)
    files = sorted(f for f in p.iterdir() if f.suffix.lower() in (".pem", ".crt", ".cer")) if p.is_dir() else [p]
    certs: list[Any] = []
    for f in files:
        try:
            certs.extend(_load_certificates(f.read_bytes()))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{f}: not a certificate file ({exc})") from None
    if not certs:
        raise ValueError(f"{path}: no certificates found")
    return certs


@dataclass
class _Cached:
    until: float
    certificate: Any = None
    failure: str = ""
    detail: str = ""


class Verifier:
    """Checks PASSporTs against a trust store; keeps fetched certificates (and their verdicts) cached.

    Shared by every call of a stage: the cache is the only state, and a lock per URL makes
    concurrent calls with the same x5u wait for one fetch instead of fetching fifty times.
    """

    def __init__(self, trust_anchors: list[Any], *, fetcher: Fetcher = fetch_url, max_age: float = 60.0,
                 fetch_timeout: float = 2.0, cache_seconds: float = 3600.0, failure_cache_seconds: float = 60.0,
                 allow_http: bool = False, region: str = "US", clock: Callable[[], float] = time.time,
                 max_cached: int = 1000) -> None:
        self.trust_anchors = trust_anchors
        self.fetcher = fetcher
        self.max_age = max_age
        self.fetch_timeout = fetch_timeout
        self.cache_seconds = cache_seconds
        self.failure_cache_seconds = failure_cache_seconds
        self.allow_http = allow_http
        self.region = region
        self.clock = clock
        self.max_cached = max_cached
        self._cache: OrderedDict[str, _Cached] = OrderedDict()
        self._locks: dict[str, threading.Lock] = {}
        self._guard = threading.Lock()

    def verify(self, identity: str, ani: str | None) -> StirResult:
        """Check one Identity header for a call whose caller is ``ani`` (E.164 or None)."""
        try:
            passport = parse_identity(identity)
        except PassportError as exc:
            return _failed(exc.code, "identity", exc.detail)
        h, c = passport.header, passport.claims
        attest = c.get("attest")
        details: dict[str, Any] = {"attestation": attest if attest in ("A", "B", "C") else None,
                                   "x5u": passport.x5u, "orig_tn": (c.get("orig") or {}).get("tn")
                                   if isinstance(c.get("orig"), dict) else None, "origid": c.get("origid"),
                                   "iat": c.get("iat")}
        if h.get("alg") != "ES256" or passport.params.get("alg", "ES256") != "ES256":
            return _failed("bad_alg", "identity", f"alg {h.get('alg')!r}", **details)
        if h.get("ppt") != "shaken" or passport.params.get("ppt", "shaken") != "shaken":
            return _failed("bad_ppt", "identity", f"ppt {h.get('ppt')!r}", **details)
        missing = [k for k in ("attest", "iat", "orig", "dest", "origid") if k not in c]
        if missing or not passport.x5u:
            return _failed("missing_claim", "identity", ", ".join(missing or ["x5u"]), **details)
        if attest not in ("A", "B", "C"):
            return _failed("bad_attest", "identity", f"attest {attest!r}", **details)
        now = self.clock()
        iat = c.get("iat")
        if isinstance(iat, bool) or not isinstance(iat, (int, float)):
            return _failed("missing_claim", "identity", "iat is not a number", **details)
        age = now - float(iat)
        details["age_seconds"] = round(age, 1)
        if abs(age) > self.max_age:
            when = f"signed {age:.0f} s ago" if age > 0 else f"signed {-age:.0f} s in the future"
            return _failed("stale_iat", "identity", f"{when}; at most {self.max_age:.0f} s allowed", **details)
        orig = c.get("orig")
        signed_tn = _tn_e164(orig.get("tn"), self.region) if isinstance(orig, dict) else None
        if signed_tn is None or signed_tn != ani:
            shown = "the caller's number" if ani else "no caller number"
            return _failed("tn_mismatch", "identity", f"signed {signed_tn or orig!r}, {shown} differs", **details)
        dest = c.get("dest")
        details["dest_tn"] = dest.get("tn") if isinstance(dest, dict) else None
        url = passport.x5u
        info = passport.params.get("info")
        if not url.startswith("https://") and not (self.allow_http and url.startswith("http://")):
            return _failed("bad_x5u", "identity", "not an https URL", **details)
        if info and info != url:
            return _failed("bad_x5u", "identity", "x5u and the info parameter differ", **details)
        cached = self._certificate(url)
        if cached.failure:
            return _failed(cached.failure, "identity", cached.detail, **details)
        if not self._signature_ok(cached.certificate, passport):
            return _failed("bad_signature", "identity", "", **details)
        details.pop("attestation")
        return StirResult("passed", attest, "", "identity", f"PASSporT verified by fsguard (attestation {attest})",
                          details)

    # -------------------------------------------------------------- internals

    def _signature_ok(self, certificate: Any, passport: Passport) -> bool:
        from cryptography.exceptions import InvalidSignature
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

        key = certificate.public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
            return False
        sig = passport.signature
        if len(sig) != 64:
            return False
        der = encode_dss_signature(int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big"))
        try:
            key.verify(der, passport.signing_input, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            return False
        return True

    def _certificate(self, url: str) -> _Cached:
        now = self.clock()
        hit = self._cache.get(url)
        if hit is not None and hit.until > now:
            return hit
        with self._guard:
            lock = self._locks.setdefault(url, threading.Lock())
        with lock:
            hit = self._cache.get(url)
            if hit is not None and hit.until > self.clock():
                return hit
            result = self._fetch_and_check(url)
            self._cache[url] = result
            self._cache.move_to_end(url)
            while len(self._cache) > self.max_cached:
                old, _ = self._cache.popitem(last=False)
                self._locks.pop(old, None)
            return result

    def _fetch_and_check(self, url: str) -> _Cached:
        from cryptography.x509 import verification as xv

        now = self.clock()
        fail_until = now + self.failure_cache_seconds
        try:
            data = self.fetcher(url, self.fetch_timeout)
        except Exception as exc:  # noqa: BLE001 - any network trouble is "unavailable"
            return _Cached(fail_until, failure="cert_unavailable", detail=f"{url}: {type(exc).__name__}: {exc}"[:300])
        try:
            chain = _load_certificates(data)
        except ValueError as exc:
            return _Cached(fail_until, failure="bad_cert", detail=str(exc)[:300])
        leaf, intermediates = chain[0], chain[1:]
        when = datetime.fromtimestamp(now, timezone.utc)
        for cert in chain:
            if not cert.not_valid_before_utc <= when <= cert.not_valid_after_utc:
                return _Cached(fail_until, failure="cert_expired",
                               detail=f"{cert.subject.rfc4514_string()} valid {cert.not_valid_before_utc:%Y-%m-%d}"
                                      f" to {cert.not_valid_after_utc:%Y-%m-%d}")
        if not self.trust_anchors:
            return _Cached(fail_until, failure="untrusted_cert", detail="no trust store configured")
        policy = xv.ExtensionPolicy.permit_all().require_present(
            _basic_constraints(), xv.Criticality.AGNOSTIC, _must_be_ca)
        verifier = (xv.PolicyBuilder().store(xv.Store(self.trust_anchors)).time(when)
                    .extension_policies(ca_policy=policy, ee_policy=xv.ExtensionPolicy.permit_all())
                    .build_client_verifier())
        try:
            verifier.verify(leaf, intermediates)
        except xv.VerificationError as exc:
            return _Cached(fail_until, failure="untrusted_cert",
                           detail=f"{leaf.subject.rfc4514_string()}: {exc}"[:300])
        until = min(now + self.cache_seconds, leaf.not_valid_after_utc.timestamp())
        return _Cached(until, certificate=leaf)


def _basic_constraints() -> Any:
    from cryptography import x509

    return x509.BasicConstraints


def _must_be_ca(_policy: Any, _cert: Any, ext: Any) -> None:
    if ext is None or not ext.ca:
        raise ValueError("an issuing certificate must be a CA")


# ---------------------------------------------------------------- signing (tests, labs)


def sign_passport(private_key: Any, *, orig_tn: str, dest_tn: str | list[str], attest: str, x5u: str,
                  iat: int | None = None, origid: str = "fsguard-test", alg: str = "ES256",
                  ppt: str = "shaken", extra_claims: dict[str, Any] | None = None) -> str:
    """An Identity header value signed with ``private_key`` (EC P-256), as an authentication
    service would send it. For tests and lab setups; fsguard itself never signs calls."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    header = {"alg": alg, "ppt": ppt, "typ": "passport", "x5u": x5u}
    claims: dict[str, Any] = {"attest": attest, "dest": {"tn": dest_tn if isinstance(dest_tn, list) else [dest_tn]},
                              "iat": int(time.time()) if iat is None else iat, "orig": {"tn": orig_tn},
                              "origid": origid, **(extra_claims or {})}
    signing_input = (_b64url_encode(json.dumps(header, separators=(",", ":")).encode()) + "."
                     + _b64url_encode(json.dumps(claims, separators=(",", ":")).encode()))
    r, s = decode_dss_signature(private_key.sign(signing_input.encode("ascii"), ec.ECDSA(hashes.SHA256())))
    signature = _b64url_encode(r.to_bytes(32, "big") + s.to_bytes(32, "big"))
    return f"{signing_input}.{signature};info=<{x5u}>;alg={alg};ppt={ppt}"

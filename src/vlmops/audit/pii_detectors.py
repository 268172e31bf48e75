"""Offline PII detectors: a candidate regex per kind, then a validator (checksum, range, context).

Each `find_*` function returns every validated match of its kind; `vlmops.audit.pii.scan_text` merges
them, keeping the most specific (then longest) of overlapping matches. Person names are spotted by
`vlmops.audit.pii_names`.
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass
from urllib.parse import parse_qsl, urlsplit

from vlmops.audit.pii_names import name_spans

KINDS = ("secret_url", "card", "iban", "national_id", "email", "ip", "phone", "name")
PRIORITY = {kind: rank for rank, kind in enumerate(KINDS)}  # lower = more specific


@dataclass(frozen=True)
class PiiMatch:
    """One detected span: `text[start:end] == self.text`."""

    kind: str
    start: int
    end: int
    text: str


def _words(words: str) -> frozenset[str]:
    return frozenset(words.split())


def _match(kind: str, text: str, start: int, end: int) -> PiiMatch:
    return PiiMatch(kind, start, end, text[start:end])


_VERSION_CONTEXT = re.compile(r"(?i)(?:\bv|\bversion|\bver\.?|\brelease|\bbuild|\brev\.?)\s*$")


def _version_context(text: str, start: int) -> bool:
    """Whether the number at `start` follows 'v', 'version', 'build'... (a version, not PII)."""
    return bool(_VERSION_CONTEXT.search(text[max(0, start - 12) : start]))


# --- email -------------------------------------------------------------------------------------------
_EMAIL_RE = re.compile(
    r"(?<![\w.+%-])([A-Za-z0-9][A-Za-z0-9._%+-]{0,63})@((?:[A-Za-z0-9-]{1,63}\.)+[A-Za-z]{2,63})(?![\w-]|\.\w)"
)


def find_emails(text: str) -> list[PiiMatch]:
    """Addresses with a sane local part (no '..', no edge dots) and a domain with an alphabetic TLD."""
    out = []
    for m in _EMAIL_RE.finditer(text):
        local, domain = m.groups()
        labels = domain.split(".")
        if ".." in local or local.endswith(".") or len(m.group()) > 254:
            continue
        if any(lab.startswith("-") or lab.endswith("-") for lab in labels):
            continue
        out.append(_match("email", text, m.start(), m.end()))
    return out


# --- phone -------------------------------------------------------------------------------------------
_PHONE_RE = re.compile(r"(?<![\w+.\-/])(?:\+|00)?\(?\d[\d ().\-]{4,24}\d(?!\w|[.\-/]\d)")


def _date_like(groups: list[str]) -> bool:
    if len(groups) != 3:
        return False
    lens = [len(g) for g in groups]
    if lens[0] == 4 and lens[1] <= 2 and lens[2] <= 2:
        year, a, b = groups
    elif lens[2] == 4 and lens[0] <= 2 and lens[1] <= 2:
        a, b, year = groups
    else:
        return False
    a_, b_ = int(a), int(b)
    month_day = (1 <= a_ <= 12 and 1 <= b_ <= 31) or (1 <= b_ <= 12 and 1 <= a_ <= 31)
    return 1000 <= int(year) <= 2199 and month_day


def _valid_phone(raw: str) -> bool:
    if re.search(r"[.\-]{2,}| {2,}", raw) or raw.count("(") != raw.count(")") or raw.count("(") > 1:
        return False
    if "(" in raw and not re.search(r"\(\d{1,5}\)", raw):
        return False
    international = raw.startswith(("+", "00"))
    digits = re.sub(r"\D", "", raw)[2 if raw.startswith("00") else 0 :]
    if len(set(digits)) <= 1:
        return False
    if international:
        return 8 <= len(digits) <= 15 and digits[0] != "0"
    groups = [g for g in re.split(r"[ .\-()]+", raw) if g]
    if not 7 <= len(digits) <= 15 or len(groups) < 2 or max(map(len, groups)) > 8:
        return False
    if any(len(g) < 2 for g in groups[1:]) or (len(groups[0]) == 1 and (len(digits) < 10 or "." in raw)):
        return False
    if "." in raw:
        if len(groups) < 3:
            return False
        try:  # an IPv4 address is not a phone number
            ipaddress.IPv4Address(raw)
            return False
        except ValueError:
            pass
    if re.fullmatch(r"\d{3}-\d{2}-\d{4}", raw):  # SSN-shaped, never a phone format
        return False
    if _date_like(groups) or all(len(g) == 4 and 1000 <= int(g) <= 2199 for g in groups):
        return False
    thousands = len(groups[0]) <= 3 and all(len(g) == 3 for g in groups[1:])
    return not (thousands and not groups[0].startswith("0") and "-" not in raw)


def _phone_spans(raw: str) -> list[tuple[int, int]]:
    """Valid phone spans in a candidate; several numbers run together are split at spaces, but only
    when the pieces cover the whole run and are unambiguous: each starts with '+' or '(', or has no
    spaces inside (so '4111 1111 1111 1112' or '1234 5678 9012 3456' do not yield phones)."""
    if _valid_phone(raw):
        return [(0, len(raw))]
    parts = [(m.start(), m.end()) for m in re.finditer(r"[^ ]+", raw)]

    def cover(i: int) -> list[tuple[int, int]] | None:
        if i == len(parts):
            return []
        for j in range(len(parts), i, -1):
            span = (parts[i][0], parts[j - 1][1])
            sub = raw[span[0] : span[1]]
            unambiguous = sub[0] in "+(" or (" " not in sub and not sub.isdigit())
            if j - i < len(parts) and unambiguous and sub[-1].isdigit() and _valid_phone(sub):
                rest = cover(j)
                if rest is not None:
                    return [span, *rest]
        return None

    return cover(0) or [] if len(parts) <= 12 else []


def find_phones(text: str) -> list[PiiMatch]:
    """+CC international numbers (8-15 digits) and separated national formats (7-15 digits)."""
    return [
        _match("phone", text, m.start() + s, m.start() + e)
        for m in _PHONE_RE.finditer(text)
        if not _version_context(text, m.start())
        for s, e in _phone_spans(m.group())
    ]


# --- payment cards -----------------------------------------------------------------------------------
_CARD_RE = re.compile(r"(?<![\w\-.])\d(?:[ \-]?\d){12,18}(?![\w]|[\-.]\d)")
_ALL = tuple(range(13, 20))
# (brand, IIN prefix ranges, lengths)
CARD_BRANDS: tuple[tuple[str, tuple[tuple[int, int], ...], tuple[int, ...]], ...] = (
    ("visa", ((4, 4),), (13, 16, 19)),
    ("mastercard", ((51, 55), (2221, 2720)), (16,)),
    ("amex", ((34, 34), (37, 37)), (15,)),
    ("discover", ((6011, 6011), (644, 649), (65, 65)), (16, 17, 18, 19)),
    ("diners", ((300, 305), (36, 36), (38, 39)), (14, 15, 16, 17, 18, 19)),
    ("jcb", ((3528, 3589),), (16, 17, 18, 19)),
    ("unionpay", ((62, 62),), (16, 17, 18, 19)),
    ("maestro", ((50, 50), (56, 58), (63, 63), (67, 67)), _ALL),
)


def luhn_valid(digits: str) -> bool:
    """The Luhn (mod 10) checksum used by payment card numbers."""
    if not digits.isdigit():
        return False
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 else 1)
        total += d - 9 if d > 9 else d
    return total % 10 == 0


def card_brand(digits: str) -> str | None:
    """The card network whose IIN prefix and length fit `digits`, else None."""
    for brand, ranges, lengths in CARD_BRANDS:
        if len(digits) in lengths and any(lo <= int(digits[: len(str(lo))]) <= hi for lo, hi in ranges):
            return brand
    return None


def find_cards(text: str) -> list[PiiMatch]:
    """13-19 digit numbers (spaces/dashes allowed) with a known IIN prefix and a valid Luhn digit."""
    out = []
    for m in _CARD_RE.finditer(text):
        groups = re.split(r"[ \-]", m.group())
        if len(groups) > 1 and any(not 3 <= len(g) <= 6 for g in groups[:-1]):
            continue
        digits = "".join(groups)
        if card_brand(digits) and luhn_valid(digits) and len(set(digits)) > 1:
            out.append(_match("card", text, m.start(), m.end()))
    return out


# --- IBAN --------------------------------------------------------------------------------------------
IBAN_LENGTHS = dict(
    AD=24, AE=23, AL=28, AT=20, AZ=28, BA=20, BE=16, BG=22, BH=22, BR=29, CH=21, CR=22, CY=28, CZ=24,
    DE=22, DK=18, DO=28, EE=20, EG=29, ES=24, FI=18, FO=18, FR=27, GB=22, GE=22, GI=23, GL=18, GR=27,
    GT=28, HR=21, HU=28, IE=22, IL=23, IS=26, IT=27, JO=30, KW=30, KZ=20, LB=28, LI=21, LT=20, LU=20,
    LV=21, MC=27, MD=24, ME=22, MK=19, MR=27, MT=31, MU=30, NL=18, NO=15, PK=24, PL=28, PS=29, PT=25,
    QA=29, RO=24, RS=22, SA=24, SE=24, SI=19, SK=24, SM=27, TN=24, TR=26, UA=29, VG=24, XK=20,
)  # fmt: skip
# Zero-width, so that a candidate that runs into the next IBAN does not hide it.
_IBAN_RE = re.compile(r"(?<![A-Za-z0-9])(?=([A-Z]{2})(\d{2})((?: ?[A-Z0-9]){10,32}))")


def iban_valid(iban: str) -> bool:
    """Country length table plus the ISO 13616 mod-97 check (remainder 1)."""
    s = iban.replace(" ", "").upper()
    if len(s) != IBAN_LENGTHS.get(s[:2], -1) or not s.isalnum() or not s[2:4].isdigit():
        return False
    return int("".join(str(int(ch, 36)) for ch in s[4:] + s[:4])) % 97 == 1


def find_ibans(text: str) -> list[PiiMatch]:
    """IBANs written compact or in groups of four, cut at their country's length and mod-97 checked."""
    out = []
    for m in _IBAN_RE.finditer(text):
        length = IBAN_LENGTHS.get(m.group(1))
        if length is None:
            continue
        count, end = 0, m.start()
        while end < m.end(3) and count < length:
            count += text[end] != " "
            end += 1
        raw = text[m.start() : end]
        if count != length or (end < len(text) and text[end].isalnum()):
            continue
        spaced = raw.split(" ")
        if len(spaced) > 1 and any(len(g) != 4 for g in spaced[:-1]):
            continue
        if iban_valid(raw):
            out.append(_match("iban", text, m.start(), end))
    return out


# --- IP addresses ------------------------------------------------------------------------------------
_IPV4_RE = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\w|\.\d)")
_IPV6_RE = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{0,4}:){2,7}(?:(?:\d{1,3}\.){3}\d{1,3}|[0-9A-Fa-f]{1,4})?(?![\w:]|\.\w)"
)


def find_ips(text: str) -> list[PiiMatch]:
    """IPv4 (four octets) and IPv6 addresses that `ipaddress` accepts; skips 0.x, loopback, reserved."""
    out = []
    for m in _IPV4_RE.finditer(text):
        if _version_context(text, m.start()):
            continue
        try:
            addr = ipaddress.IPv4Address(m.group())
        except ValueError:
            continue
        if not (m.group().startswith("0") or addr.is_loopback or addr.is_reserved or addr.is_unspecified):
            out.append(_match("ip", text, m.start(), m.end()))
    for m in _IPV6_RE.finditer(text):
        candidate = m.group()
        if sum(c in "0123456789abcdefABCDEF" for c in candidate) < 4:
            continue
        try:
            addr6 = ipaddress.IPv6Address(candidate)
        except ValueError:
            continue
        if not (addr6.is_loopback or addr6.is_unspecified):
            out.append(_match("ip", text, m.start(), m.end()))
    return out


# --- national IDs ------------------------------------------------------------------------------------
_SSN_RE = re.compile(r"(?<![\w\-])(\d{3})-(\d{2})-(\d{4})(?![\w]|-\d)")
_NINO_RE = re.compile(
    r"(?<![A-Za-z0-9])([A-CEGHJ-PR-TW-Z][A-CEGHJ-NPR-TW-Z]) ?\d{2} ?\d{2} ?\d{2} ?[A-D](?![A-Za-z0-9])"
)
_NINO_BAD_PREFIXES = {"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"}
_LABELLED_ID_RE = re.compile(
    r"(?:\b(?i:passport|ssn|social\s+security(?:\s+number)?|national\s+id|identity\s+(?:card|number)"
    r"|id\s+(?:card|number)|personal\s+id|tax\s+id|driver'?s\s+licen[cs]e)|\bID)"
    r"(?:\s*(?i:no\.?|number|#))?\s*[:#]\s*((?:[A-Z]{1,3}[ -]?)?\d(?:\d|[ -](?=\d)){5,18}[A-Z]?)(?![\w])"
)


def ssn_valid(ssn: str) -> bool:
    """US SSN ddd-dd-dddd with a possible area (not 000, 666, 9xx), group (not 00) and serial (not 0000)."""
    m = re.fullmatch(r"(\d{3})-(\d{2})-(\d{4})", ssn)
    if not m:
        return False
    area, group, serial = m.groups()
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def find_national_ids(text: str) -> list[PiiMatch]:
    """US SSNs, UK National Insurance numbers and values labelled 'ID:', 'Passport no:', 'SSN:'..."""
    out = [
        _match("national_id", text, m.start(), m.end())
        for m in _SSN_RE.finditer(text)
        if ssn_valid(m.group())
    ]
    out += [
        _match("national_id", text, m.start(), m.end())
        for m in _NINO_RE.finditer(text)
        if m.group(1) not in _NINO_BAD_PREFIXES
    ]
    out += [_match("national_id", text, m.start(1), m.end(1)) for m in _LABELLED_ID_RE.finditer(text)]
    return out


# --- URLs carrying secrets ---------------------------------------------------------------------------
_URL_RE = re.compile(r"(?i)\b(?:https?|ftps?|wss?)://[^\s<>\"'`]+")
SECRET_PARAMS = _words(
    "token access_token refresh_token id_token api_key apikey key sig signature secret client_secret "
    "password passwd pwd auth session sessionid session_id x-amz-signature x-amz-security-token "
    "x-goog-signature"
)
_SECRET_SUFFIXES = ("_token", "-token", "_secret", "_key", "-key", "_signature", "-signature", "password")


def is_secret_param(name: str) -> bool:
    """Whether a query/fragment parameter name usually carries a credential."""
    name = name.lower()
    return name in SECRET_PARAMS or name.endswith(_SECRET_SUFFIXES)


def url_secrets(url: str) -> list[str]:
    """The credential-bearing parts of `url`: 'userinfo' and/or secret parameter names."""
    try:
        parts = urlsplit(url)
        found = ["userinfo"] if parts.password else []
    except ValueError:
        return []
    for section in (parts.query, parts.fragment):
        for name, value in parse_qsl(section, keep_blank_values=True):
            if is_secret_param(name) and len(value) >= 4 and value.lower() not in ("true", "false", "null"):
                found.append(name)
    return found


def find_secret_urls(text: str) -> list[PiiMatch]:
    """http(s)/ftp/ws URLs with user:pass@ or token/api_key/signature-like query or fragment values."""
    out = []
    for m in _URL_RE.finditer(text):
        url = m.group().rstrip(".,;:!?)]}'\"")
        if url_secrets(url):
            out.append(_match("secret_url", text, m.start(), m.start() + len(url)))
    return out


# --- person names ------------------------------------------------------------------------------------
def find_names(text: str) -> list[PiiMatch]:
    """'Firstname [X.] Lastname' with a listed given name, and honorific + surname ('Dr. Lee')."""
    return [_match("name", text, start, end) for start, end in name_spans(text)]


DETECTORS = (
    find_secret_urls, find_cards, find_ibans, find_national_ids,
    find_emails, find_ips, find_phones, find_names,
)  # fmt: skip

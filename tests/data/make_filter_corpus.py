"""Writes filter_corpus.jsonl: customer-service messages with planted secrets and look-alike decoys, labelled.

    .venv/bin/python tests/data/make_filter_corpus.py

Fixed seed, so the file is reproducible. Every planted value is fake but passes its checksum (Luhn, mod-97,
SSN ranges, DNI letter); every decoy is a near miss (wrong check digit, invalid range) or an everyday number.
Independent of activities/filtering.py on purpose: the labels must not come from the code they test.
"""

from __future__ import annotations

import base64
import json
import random
import string
from pathlib import Path

SEED = 20261121
OUT = Path(__file__).with_name("filter_corpus.jsonl")
r = random.Random(SEED)
ALNUM = string.ascii_letters + string.digits


def digits(n: int) -> str:
    return "".join(r.choice(string.digits) for _ in range(n))


def luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        d = int(ch)
        if i % 2 == 0:
            d = d * 2 - 9 if d > 4 else d * 2
        total += d
    return str((10 - total % 10) % 10)


def group(s: str, sizes: list[int], sep: str) -> str:
    out, i = [], 0
    for size in sizes:
        out.append(s[i : i + size])
        i += size
    return sep.join(out)


def card_number(valid: bool = True) -> str:
    prefix, length = r.choice([("411111", 16), ("401288", 16), ("555555", 16), ("510510", 16), ("601111", 16),
                               ("378282", 15), ("371449", 15), ("400000", 16), ("222300", 16)])
    body = prefix + digits(length - len(prefix) - 1)
    check = luhn_digit(body)
    if not valid:
        check = str((int(check) + r.randint(1, 9)) % 10)
    number = body + check
    style = r.choice(["plain", "space", "dash"])
    if style == "plain":
        return number
    sizes = [4, 6, 5] if length == 15 else [4, 4, 4, 4]
    return group(number, sizes, " " if style == "space" else "-")


def iban(valid: bool = True) -> str:
    country = r.choice(["DE", "GB", "FR", "NL", "ES", "IT"])
    if country == "DE":
        bban = digits(18)
    elif country == "GB":
        bban = "".join(r.choice(string.ascii_uppercase) for _ in range(4)) + digits(14)
    elif country == "FR":
        bban = digits(23)
    elif country == "NL":
        bban = "".join(r.choice(string.ascii_uppercase) for _ in range(4)) + digits(10)
    elif country == "ES":
        bban = digits(20)
    else:
        bban = r.choice(string.ascii_uppercase) + digits(22)
    numeric = "".join(str(int(c, 36)) for c in bban + country + "00")
    check = 98 - int(numeric) % 97
    if not valid:
        check = (check + r.randint(1, 96)) % 97 or 97
        check = check if check >= 2 else check + 2
    value = f"{country}{check:02d}{bban}"
    return " ".join(value[i : i + 4] for i in range(0, len(value), 4)) if r.random() < 0.5 else value


def ssn(valid: bool = True) -> str:
    if valid:
        area = r.choice([a for a in range(1, 900) if a != 666])
        return f"{area:03d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}"
    return r.choice([
        f"000-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}",
        f"666-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}",
        f"9{r.randint(0, 99):02d}-{r.randint(1, 99):02d}-{r.randint(1, 9999):04d}",
        f"{r.randint(1, 665):03d}-00-{r.randint(1, 9999):04d}",
        f"{r.randint(1, 665):03d}-{r.randint(1, 99):02d}-0000",
    ])  # fmt: skip


def nino() -> str:
    first = r.choice("ABCEGHJKLMNPRSTWXYZ")
    second = r.choice("ABCEGHJKLMNPRSTWXYZ")
    while first + second in ("BG", "GB", "KN", "NK", "NT", "TN", "ZZ"):
        second = r.choice("ABCEGHJKLMNPRSTWXYZ")
    body = digits(6)
    suffix = r.choice("ABCD")
    if r.random() < 0.5:
        return f"{first}{second} {body[:2]} {body[2:4]} {body[4:]} {suffix}"
    return f"{first}{second}{body}{suffix}"


DNI_LETTERS = "TRWAGMYFPDXBNJZSQVHLCKE"


def dni(valid: bool = True) -> str:
    number = digits(8)
    letter = DNI_LETTERS[int(number) % 23]
    if not valid:
        letter = r.choice([c for c in DNI_LETTERS if c != letter])
    return number + letter


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def jwt() -> str:
    header = {"alg": r.choice(["HS256", "RS256", "ES256"]), "typ": "JWT"}
    payload = {"sub": digits(8), "name": r.choice(NAMES), "iat": 1700000000 + r.randint(0, 10**7)}
    sig = b64url(bytes(r.getrandbits(8) for _ in range(32)))
    return f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(payload).encode())}.{sig}"


def token(n: int, alphabet: str = ALNUM) -> str:
    return "".join(r.choice(alphabet) for _ in range(n))


def api_key() -> str:
    return r.choice([
        lambda: "sk_live_" + token(24),
        lambda: "sk_test_" + token(24),
        lambda: "rk_live_" + token(24),
        lambda: "sk-proj-" + token(40),
        lambda: "sk-" + token(48),
        lambda: "AKIA" + token(16, string.ascii_uppercase + string.digits),
        lambda: "ghp_" + token(36),
        lambda: "github_pat_" + token(22) + "_" + token(59),
        lambda: "xoxb-" + digits(12) + "-" + digits(12) + "-" + token(24),
        lambda: "AIza" + token(35, ALNUM + "_-"),
    ])()  # fmt: skip


def bearer() -> str:
    return "Bearer " + r.choice([token(40), token(32, ALNUM + "-._~"), jwt()])


def private_key() -> str:
    kind = r.choice(["RSA ", "EC ", "", "OPENSSH "])
    body = "\n".join(token(64, ALNUM + "+/") for _ in range(r.randint(2, 5)))
    return f"-----BEGIN {kind}PRIVATE KEY-----\n{body}\n-----END {kind}PRIVATE KEY-----"


NAMES = ["Alice Moreau", "Bram de Vries", "Chen Wei", "Dolores Ruiz", "Emeka Obi", "Fatima Khan", "Greta Lund"]

PLANTERS = {
    "card": (card_number, [
        "my card number is {v}", "you charged {v} twice", "please refund to the card {v}",
        "the card ending in the number {v} was declined", "Card: {v}",
    ]),
    "iban": (iban, [
        "my IBAN is {v}", "please send the refund to {v}", "transfer it to account {v} please",
        "IBAN: {v}",
    ]),
    "national_id": (lambda: r.choice([ssn, nino, dni])(), [
        "my social is {v}", "for verification my ID number is {v}", "national insurance number {v}",
        "the form asked for {v} so I gave it",
    ]),
    "jwt": (jwt, [
        "the app shows this token {v} when it crashes", "error page printed {v}", "session token was {v}",
    ]),
    "bearer": (bearer, [
        "I called your API with Authorization: {v} and got a 401", "the header was {v}",
        "curl -H 'Authorization: {v}' fails",
    ]),
    "api_key": (api_key, [
        "my integration uses the key {v}", "we rotated to {v} yesterday", "is {v} still valid?",
        "the dashboard shows {v} as active",
    ]),
    "private_key": (private_key, [
        "here is the key file:\n{v}\nis it the right one?", "I pasted {v} into the settings page",
    ]),
}  # fmt: skip


def luhn_invalid_card() -> str:
    return card_number(valid=False)


DECOYS = {
    "luhn_invalid": (luhn_invalid_card, ["is {v} a valid card at all?", "the old card {v} expired"]),
    "order": (lambda: r.choice([f"ORD-2024-{digits(6)}", f"#{digits(4)} {digits(4)}", f"order {digits(9)}",
                                f"INV-{digits(5)}-{digits(2)}"]),
              ["my order {v} never arrived", "about {v}", "reference {v}"]),
    "date": (lambda: r.choice([f"2024-{r.randint(1, 12):02d}-{r.randint(1, 28):02d}",
                               f"{r.randint(1, 28):02d}/{r.randint(1, 12):02d}/2025", "March 3, 2025"]),
             ["on {v}", "since {v}", "it was delivered {v}"]),
    "phone": (lambda: r.choice([f"+1 415 555 {digits(4)}", f"+44 20 7946 {digits(4)}", f"(415) 555-{digits(4)}",
                                f"+49151{digits(8)}", f"+31 6 {digits(8)}"]),
              ["call me at {v}", "my phone is {v}", "text {v}"]),
    "tracking": (lambda: r.choice([f"1Z{token(3, string.ascii_uppercase + string.digits)}AA1{digits(10)}",
                                   " ".join(["9400", *(digits(4) for _ in range(4)), digits(2)]),
                                   f"JD{digits(18)}"]),
                 ["tracking says {v}", "parcel {v} is stuck"]),
    "uuid": (lambda: "-".join([token(8, "0123456789abcdef"), token(4, "0123456789abcdef"),
                               "4" + token(3, "0123456789abcdef"), "a" + token(3, "0123456789abcdef"),
                               token(12, "0123456789abcdef")]),
             ["request id {v}", "ticket {v}"]),
    "amount": (lambda: r.choice([f"${r.randint(1, 9)},{digits(3)}.{digits(2)}", f"€{r.randint(10, 999)},{digits(2)}",
                                 f"{r.randint(100, 99999)} USD"]),
               ["I was charged {v}", "refund of {v}"]),
    "bad_iban": (lambda: iban(valid=False), ["is {v} right? the bank says it's wrong", "old IBAN {v} is closed"]),
    "bad_ssn": (lambda: ssn(valid=False), ["the form pre-filled {v} which is not mine", "sample id {v}"]),
    "bad_dni": (lambda: dni(valid=False), ["the letter on {v} looks wrong"]),
    "prose": (lambda: r.choice(["the bearer of this letter", "sk-ip the intro", "a private key ring",
                                "token of appreciation"]), ["{v}, thanks"]),
}  # fmt: skip

OPENERS = ["Hi,", "Hello there.", "Hey support,", "Good morning!", "", "Urgent:", "Hi team,"]
CLOSERS = ["Thanks.", "Can you help?", "Please fix this asap.", "", "Cheers", "Regards, " + NAMES[0]]


def fill(templates: list[str], value: str) -> str:
    return r.choice(templates).replace("{v}", value)


def message(n_planted: int, n_decoys: int) -> dict:
    parts, planted, decoys = [], [], []
    for kind in r.sample(sorted(PLANTERS), n_planted):
        make, templates = PLANTERS[kind]
        value = make()
        planted.append({"kind": kind, "value": value})
        parts.append(fill(templates, value))
    for kind in r.sample(sorted(DECOYS), n_decoys):
        make, templates = DECOYS[kind]
        value = make()
        decoys.append({"kind": kind, "value": value})
        parts.append(fill(templates, value))
    r.shuffle(parts)
    text = " ".join(p for p in [r.choice(OPENERS), "; ".join(parts) + ".", r.choice(CLOSERS)] if p)
    return {"text": text, "planted": planted, "decoys": decoys}


def main() -> None:
    rows = []
    for _ in range(60):  # decoys only: nothing may be flagged
        rows.append(message(0, r.randint(1, 4)))
    for _ in range(140):  # one planted value among decoys
        rows.append(message(1, r.randint(0, 3)))
    for _ in range(50):  # several planted values among decoys
        rows.append(message(r.randint(2, 3), r.randint(1, 3)))
    for kind in sorted(PLANTERS):  # every kind alone at least a few times
        for _ in range(3):
            make, templates = PLANTERS[kind]
            value = make()
            rows.append({"text": fill(templates, value), "planted": [{"kind": kind, "value": value}], "decoys": []})
    r.shuffle(rows)
    OUT.write_text("".join(json.dumps(row) + "\n" for row in rows))
    print(f"wrote {len(rows)} messages to {OUT}")


if __name__ == "__main__":
    main()

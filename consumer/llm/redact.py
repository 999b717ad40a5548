"""Redaction of payload samples before they leave the warehouse (the LLM step).

What is masked, in any JSON-like value (dicts, lists, strings, numbers):

- card numbers: Luhn-valid runs of 12-19 digits written with any separator (none, spaces, dashes,
  dots between groups), in strings and in JSON numbers, keep only the last 4 digits
  (``************1111``); a digit run that is part of an identifier (a UUID's last group, a
  hex or alphanumeric reference) is not a card and stays as it is;
- e-mail addresses anywhere in a string;
- person names, personal data and secrets by key, in English, Spanish, Portuguese, French, German
  and Italian (``titular``, ``cedula``, ``direccion``, ``cpf_pagador``, ``iban_beneficiario``,
  ``contraseña``, ``clave``, ``senha``, ...; accents and case ignored; compound keys by their parts);
- person names in obvious fields (``holder``, ``cardholder``, ``first_name``, ``customer_name``…,
  and ``name`` unless its parent is clearly not a person: merchant, provider, product…), and other
  personal data keys (phone, address lines, document numbers, birth dates, IPs);
- secrets: values of keys such as ``token``, ``secret``, ``password``, ``api_key``,
  ``authorization``, ``cvv``/``cvc``, ``pin``, and values that look like credentials wherever they
  are (``sk_live_…``, ``whsec_…``, ``Bearer …``, JWTs, long random-looking strings outside id fields);
- long free text is truncated.

The structure (keys, types, nesting) is kept: the LLM must still see the shape and which values
look like statuses, amounts, currencies and timestamps.
"""

from __future__ import annotations

import math
import re
import unicodedata
from collections import Counter
from typing import Any

MAX_TEXT = 160  # characters kept of a long string
# A whole run of digits (single spaces or dashes between them allowed): a UUID or a date is one long run,
# never cut into a card-sized piece.
# Not inside an identifier: no letter or digit touches the run, directly or across one separator.
_SEP = r"[ .\-]"
CARD_RE = re.compile(rf"(?<![0-9A-Za-z])(?<![0-9A-Za-z][.\-])(?:[0-9]{_SEP}?){{11,18}}[0-9](?![.\-]?[0-9A-Za-z])"
                     rf"(?! [0-9])")
_SEPARATORS = re.compile(_SEP)
EMAIL_RE = re.compile(r"[A-Za-z0-9._%+\-]+@[A-Za-z0-9\-]+(?:\.[A-Za-z0-9\-]+)+")
SECRET_PREFIX_RE = re.compile(
    r"^(?:sk|rk|whsec|sk_live|sk_test|rk_live|rk_test|pat|ghp|xox[abp]|AKIA)[_\-]?[A-Za-z0-9_\-]{8,}$"
    r"|^(?:Bearer|Basic)\s+\S+$"
    r"|^eyJ[A-Za-z0-9_\-]+\.[A-Za-z0-9_\-]+(?:\.[A-Za-z0-9_\-]*)?$",
    re.I,
)
_WORD = re.compile(r"[^a-z0-9]+")

SECRET_KEYS = {
    "token", "access_token", "refresh_token", "id_token", "auth_token", "card_token", "token_id", "secret",
    "client_secret", "secret_key", "api_secret", "password", "passwd", "pwd", "pass", "passphrase",
    "api_key", "apikey", "key_secret", "private_key", "authorization", "auth", "cookie", "session",
    "session_id", "cvv", "cvv2", "cvc", "cvc2", "cav", "cav2", "cid", "card_security_code", "security_code",
    "securitycode", "pin", "pin_block", "pinblock", "otp", "signature", "hmac", "x_api_key",
    "webhook_secret", "merchant_key", "merchant_secret", "credentials", "credential",
    # es / pt / fr / de / it
    "contrasena", "clave", "clave_secreta", "llave", "llave_privada", "secreto", "senha", "segredo", "chave",
    "chave_secreta", "mot_de_passe", "motdepasse", "cle", "cle_secrete", "jeton", "passwort", "kennwort",
    "geheimnis", "schluessel", "schlussel", "chiave", "chiave_segreta", "parola_d_ordine", "parola_chiave",
    "codigo_seguridad", "codigo_de_seguridad", "cod_seguranca", "codigo_seguranca", "cryptogramme",
    "pruefnummer", "prufnummer",
}
SECRET_KEY_PARTS = ("token", "secret", "password", "passwd", "apikey", "api_key", "authorization", "cvv",
                    "cvc", "private_key", "signature", "contrasena", "senha", "passwort", "kennwort",
                    "mot_de_passe", "clave", "chave", "chiave", "secreto", "segredo")
NAME_KEYS = {
    "holder", "holder_name", "holdername", "cardholder", "card_holder", "cardholder_name", "card_holder_name",
    "cardholdername", "first_name", "firstname", "last_name", "lastname", "middle_name", "full_name",
    "fullname", "customer_name", "customername", "payer_name", "payername", "buyer_name", "billing_name",
    "shipping_name", "given_name", "givenname", "family_name", "familyname", "surname", "nombre",
    "apellido", "apellidos", "nome", "sobrenome", "owner_name", "account_holder", "account_holder_name",
    "name_on_card", "nameoncard", "client_name", "contact_name", "recipient_name", "sender_name",
    "shopper_name", "shoppername", "user_name", "username", "person_name",
    # es / pt / fr / de / it
    "titular", "nombre_titular", "titular_nombre", "nome_titular", "titular_cartao", "portador", "nombres",
    "primer_nombre", "segundo_nombre", "primer_apellido", "segundo_apellido", "nombre_completo",
    "nome_completo", "sobrenomes", "titulaire", "nom", "prenom", "nom_titulaire", "porteur", "vorname",
    "nachname", "familienname", "inhaber", "karteninhaber", "kontoinhaber", "cognome", "intestatario",
    "titolare", "nome_cognome",
}
PII_KEYS = {
    "phone", "phone_number", "phonenumber", "mobile", "mobile_phone", "telephone", "tel", "celular",
    "address", "address1", "address2", "address_line", "address_line1", "address_line2", "line1", "line2",
    "street", "street_address", "house_number", "houseno", "birth_date", "birthdate", "date_of_birth", "dob",
    "ssn", "tax_id", "taxid", "document", "document_number", "documentnumber", "dni", "cpf", "cnpj", "rut",
    "nit", "curp", "rfc", "passport", "national_id", "ip", "ip_address", "ipaddress", "client_ip",
    "shopper_ip", "shopperip", "iban", "account_number", "accountnumber", "bank_account",
    # es / pt / fr / de / it
    "cedula", "numero_cedula", "documento", "numero_documento", "nro_documento", "num_documento",
    "tipo_y_numero_documento", "identificacion", "ruc", "ine", "nie", "nif", "direccion", "domicilio",
    "calle", "telefono", "celular", "movil", "fecha_nacimiento", "cuenta", "numero_cuenta", "cuenta_bancaria",
    "clabe", "cbu", "rg", "endereco", "logradouro", "bairro", "telefone", "data_nascimento", "conta",
    "numero_conta", "conta_bancaria", "adresse", "rue", "telephone", "date_naissance", "date_de_naissance",
    "numero_compte", "compte_bancaire", "anschrift", "strasse", "hausnummer", "telefon", "handy",
    "geburtsdatum", "kontonummer", "steuernummer", "indirizzo", "via", "telefono_cellulare", "cellulare",
    "data_nascita", "data_di_nascita", "codice_fiscale", "partita_iva", "conto", "numero_conto",
}
# Parts that make a compound key personal data wherever they appear (cpf_pagador, iban_beneficiario).
PII_KEY_PARTS = {
    "cpf", "cnpj", "iban", "cedula", "dni", "rut", "curp", "rfc", "ssn", "passport", "pasaporte", "passaporte",
    "direccion", "endereco", "adresse", "indirizzo", "anschrift", "telefono", "telefone", "telephone", "phone",
    "nif", "nie", "clabe", "cbu", "codice_fiscale", "birthdate", "dob",
}
# Parents under which a bare `name` is not a person's name.
NOT_PERSON_PARENTS = {
    "merchant", "provider", "gateway", "processor", "acquirer", "network", "brand", "scheme", "method",
    "payment_method", "paymentmethod", "product", "item", "items", "line_items", "plan", "event", "type",
    "store", "shop", "company", "business", "bank", "issuer", "currency", "country", "status", "app",
    "application", "platform", "source", "channel", "category", "descriptor", "card_brand", "wallet",
}
PERSON_PARENTS = {
    "customer", "payer", "buyer", "billing", "shipping", "card", "holder", "cardholder", "owner", "client",
    "user", "contact", "recipient", "sender", "shopper", "person", "consumer", "account_holder", "billing_details",
    "billing_address", "shipping_address", "customer_details", "payer_info", "shopper_name",
}
ID_KEY_RE = re.compile(r"(^|_)(id|ids|uuid|ref|reference|number|no|code|key)$|^id|reference|order|transaction|"
                       r"charge|payment|invoice|psp|receipt|authorization_code|auth_code|rrn|arn")


TIME_KEY_RE = re.compile(r"(^|_)(ts|time|timestamp|date|datetime|created|updated|modified|at|epoch)$|^(ts|time|date)_")


def _norm_key(key: Any) -> str:
    k = unicodedata.normalize("NFKD", str(key))
    k = "".join(ch for ch in k if not unicodedata.combining(ch))  # contraseña -> contrasena, cédula -> cedula
    k = k.replace("ß", "ss")
    k = re.sub(r"(?<=[a-z0-9])(?=[A-Z])", "_", k)  # camelCase -> camel_case
    return _WORD.sub("_", k.lower()).strip("_").lstrip("@")


def luhn_ok(digits: str) -> bool:
    """Luhn checksum of a string of digits."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2 == 1:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def is_card_number(digits: str) -> bool:
    """12-19 digits, Luhn-valid, not starting with 0 (no card scheme) and not one repeated digit."""
    return 12 <= len(digits) <= 19 and digits[0] != "0" and len(set(digits)) > 1 and luhn_ok(digits)


def _mask_card(m: re.Match[str]) -> str:
    run = m.group(0)
    digits = _SEPARATORS.sub("", run)
    if not is_card_number(digits) or ("." in run and not _dotted_groups(run)):
        return run
    return "*" * (len(digits) - 4) + digits[-4:]


def _dotted_groups(run: str) -> bool:
    """A dotted run is a card only when written in groups (4111.1111.1111.1111, 3782.822463.10005),
    never a decimal number such as 1234567890123.45."""
    return all(len(g) >= 4 for g in run.split(".")) and run.count(".") >= 2


def mask_cards(text: str) -> str:
    """Luhn-valid 12-19 digit runs masked, last 4 kept."""
    return CARD_RE.sub(_mask_card, text)


def mask_emails(text: str) -> str:
    return EMAIL_RE.sub("[email]", text)


def _entropy(s: str) -> float:
    counts = Counter(s)
    return -sum(c / len(s) * math.log2(c / len(s)) for c in counts.values())


def looks_secret(value: str, *, id_field: bool = False) -> bool:
    """A credential-looking string: known secret prefixes, bearer/JWT, or long and random outside id fields."""
    v = value.strip()
    if SECRET_PREFIX_RE.match(v):
        return True
    if id_field or len(v) < 32 or " " in v:
        return False
    if not re.fullmatch(r"[A-Za-z0-9+/=_\-.]+", v):
        return False
    classes = sum(bool(re.search(p, v)) for p in (r"[a-z]", r"[A-Z]", r"[0-9]"))
    if re.fullmatch(r"[0-9a-fA-F\-]+", v) and len(re.sub("-", "", v)) in (32,):
        return False  # a UUID / md5-looking id: not a credential
    return classes >= 2 and _entropy(v) >= 3.5


def _is_secret_key(k: str) -> bool:
    if k in SECRET_KEYS:
        return True
    if re.search(r"_(code|id|status|type|method|result|verified|present|check|checks)$", k):
        return False  # authorization_code, token_type, cvc_check: facts about a secret, not the secret
    return any(p in k for p in SECRET_KEY_PARTS)


CARD_KEYS = {"pan", "card_number", "cardnumber", "card_no", "cc_number", "ccnumber", "account_number_card"}


def _is_card_key(k: str, parent: str) -> bool:
    return k in CARD_KEYS or (k in ("number", "num") and "card" in parent)


def _last4(value: Any) -> str:
    digits = re.sub(r"[^0-9]", "", str(value))
    return "*" * max(len(digits) - 4, 0) + digits[-4:] if len(digits) > 4 else "[card]"


def _is_pii_key(k: str) -> bool:
    if k in PII_KEYS:
        return True
    parts = set(k.split("_"))
    return bool(parts & PII_KEY_PARTS) or any(p in k for p in PII_KEY_PARTS if "_" in p)


def _is_name_key(k: str, parent: str) -> bool:
    if k in NAME_KEYS:
        return True
    if k in ("name", "nombre", "nome"):
        return parent not in NOT_PERSON_PARENTS
    if k.endswith("_name") and (k.split("_")[0] in PERSON_PARENTS):
        return True
    return False


def redact_text(text: str, *, max_len: int = MAX_TEXT) -> str:
    """Emails and card numbers masked, then truncated to ``max_len`` characters."""
    out = mask_emails(mask_cards(text))
    if len(out) > max_len:
        out = out[:max_len] + f"...[truncated {len(out) - max_len} chars]"
    return out


def redact(value: Any, *, key: str = "", parent: str = "", max_len: int = MAX_TEXT) -> Any:
    """A redacted deep copy of a JSON-like value (see the module docstring)."""
    k = _norm_key(key) if key else ""
    if isinstance(value, dict):
        return {kk: redact(vv, key=kk, parent=k, max_len=max_len) for kk, vv in value.items()}
    if isinstance(value, list):
        return [redact(v, key=key, parent=parent, max_len=max_len) for v in value]
    if value is None or isinstance(value, bool):
        return value
    if k and _is_secret_key(k):
        return "[secret]"
    if k and _is_card_key(k, parent):
        return _last4(value)
    if k and (_is_name_key(k, parent) or _is_pii_key(k)):
        return "[name]" if _is_name_key(k, parent) else "[pii]"
    if k and TIME_KEY_RE.search(k) and re.fullmatch(r"\s*[0-9]{9,13}(\.[0-9]+)?\s*", str(value)):
        return value  # an epoch timestamp, not a card number (the model must see its size)
    if isinstance(value, (int, float)) or type(value).__name__ == "Decimal":
        text = str(value)
        if re.fullmatch(r"[0-9]{12,19}", text):
            masked = mask_cards(text)
            if masked != text:
                return masked
        return value
    if isinstance(value, str):
        if looks_secret(value, id_field=bool(k and ID_KEY_RE.search(k))):
            v = value.strip()
            return v[:4] + f"...[secret, {len(v)} chars]"
        return redact_text(value, max_len=max_len)
    return value


def find_cards(text: str) -> list[str]:
    """Luhn-valid card numbers (digits only) found in ``text`` (for tests and audits)."""
    out = []
    for m in CARD_RE.finditer(text):
        run = m.group(0)
        digits = _SEPARATORS.sub("", run)
        if is_card_number(digits) and ("." not in run or _dotted_groups(run)):
            out.append(digits)
    return out


def find_emails(text: str) -> list[str]:
    return EMAIL_RE.findall(text)


def _person_values(value: Any, key: str = "", parent: str = "", out: set[str] | None = None) -> set[str]:
    out = set() if out is None else out
    k = _norm_key(key) if key else ""
    if isinstance(value, dict):
        for kk, vv in value.items():
            _person_values(vv, kk, k, out)
    elif isinstance(value, list):
        for v in value:
            _person_values(v, key, parent, out)
    elif isinstance(value, str) and k and _is_name_key(k, parent):
        v = value.strip()
        if len(v) >= 3:
            out.add(v)
            out.update(p for p in re.split(r"[\s,]+", v) if len(p) >= 3)
    return out


def _scrub(value: Any, pattern: re.Pattern[str] | None) -> Any:
    if pattern is None:
        return value
    if isinstance(value, dict):
        return {k: _scrub(v, pattern) for k, v in value.items()}
    if isinstance(value, list):
        return [_scrub(v, pattern) for v in value]
    if isinstance(value, str):
        return pattern.sub("[name]", value)
    return value


def redact_record(value: Any, *, max_len: int = MAX_TEXT) -> Any:
    """``redact`` plus: names found in the record's name fields are also masked wherever else they
    appear in it (a memo "order for Juan Perez" next to ``holder: Juan Perez``)."""
    names = sorted(_person_values(value), key=len, reverse=True)
    pattern = (re.compile(r"(?<![A-Za-z0-9])(?:" + "|".join(re.escape(n) for n in names) + r")(?![A-Za-z0-9])", re.I)
               if names else None)
    return _scrub(redact(value, max_len=max_len), pattern)

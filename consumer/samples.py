"""Sample lake records: the examples of the original specification, verbatim (the generator is consumer.demo)."""

from __future__ import annotations

import uuid
from decimal import Decimal
from typing import Any

MERCHANTS = [
    {"id": "06cbe458-8bfd-408b-81d4-215a5b1b4594", "name": "Falabella", "country": "CO"},
    {"id": "2040ca76-48fa-4daa-b29d-2ebb956fd1ee", "name": "Shopito", "country": "PE"},
    {"id": "38b80531-5702-43b7-84e0-e7fb86bd73b5", "name": "Netflix", "country": "PE"},
]


def brief_records() -> list[dict[str, Any]]:
    """The records of the original specification, verbatim (ids included), plus its two older-layout payloads."""
    return [
        {"id": "2ed7f2ee-99b7-4b8b-b60f-4d6b6aa1667c",
         "data": {"amt": Decimal("25.84"), "p_id": "Stripe", "exec_ms": 402, "st_code": 1,
                  "server_txt": "00_SUCCESS", "card_country": "ES"},
         "merchant": MERCHANTS[0], "transactional_id": "fbd7fbbf-6332-4ce8-97bc-22df148e5b8b"},
        {"id": "a6f563ae-2873-4bd5-8190-8c2f4ed6bd79",
         "data": {"type": "XML_BLOB",
                  "content": "<Tx><MerchID>2040ca76</MerchID><Val>129.97</Val><Stat>APPROVED</Stat></Tx>"},
         "merchant": MERCHANTS[1], "transactional_id": "73f578b6-02f1-4eaf-aabb-297b15c9a64a"},
        {"id": "d66f4406-a33c-4485-ac0c-67050b54ee33",
         "data": {"meta": {"code": 200, "latency": 741}, "status": "APPROVED", "provider": "PayU",
                  "origin_iso": "AR", "amount_details": {"value": Decimal("422.45"), "currency": "USD"}},
         "merchant": MERCHANTS[2], "transactional_id": "cdb391e2-cab7-4cf8-b043-c997f17d8bb4"},
        {"id": str(uuid.UUID(int=1)), "data": {"id": "tx_123", "amount": Decimal("100.50"), "status": "approved"},
         "merchant": MERCHANTS[0], "transactional_id": str(uuid.UUID(int=101)), "source": "stripe"},
        {"id": str(uuid.UUID(int=2)), "data": {"transaction_id": "pay_456", "value": 250, "state": "declined"},
         "merchant": MERCHANTS[1], "transactional_id": str(uuid.UUID(int=102)), "source": "adyen"},
    ]

"""The landing: ``raw.lake_transactions`` and the one commit every source lands through.

A source builds ``LandingRow``s (or staged records) and hands them, with its checkpoint, to
``commit``: rows and checkpoint are written in one warehouse transaction with the single-writer
fence checked inside it; the source acknowledges its checkpoint (confirms the LSN to the lake, flags
rows processed) only after that returns. Source precedence is the upsert's (``table``).
"""

from .commit import Checkpoint, Fence, Rows, commit
from .decoder import DecodeWorker
from .table import (
    PAYLOAD_COLUMN_CANDIDATES,
    STAGED_COLUMNS,
    STAGING_DDL,
    LandingBatch,
    LandingRow,
    encode_json_value,
    encode_text_value,
    init_warehouse,
    payload_pairs,
    stage,
    stage_rows,
    staged_owned_elsewhere,
    staged_records,
    tombstone_source,
    tombstone_unstaged,
    upsert_staged,
    write_batch,
)

__all__ = [
    "Checkpoint", "Fence", "Rows", "commit", "DecodeWorker",
    "PAYLOAD_COLUMN_CANDIDATES", "STAGED_COLUMNS", "STAGING_DDL", "LandingBatch", "LandingRow", "encode_json_value",
    "encode_text_value", "init_warehouse", "payload_pairs", "stage", "stage_rows", "staged_owned_elsewhere", "staged_records", "tombstone_source",
    "tombstone_unstaged", "upsert_staged", "write_batch",
]

"""Any CSV, JSONL, Parquet or Excel (.xlsx) export as canonical events, described by a TOML mapping: no code.

    source = "crm"                  # the events' source
    format = "csv"                  # csv | jsonl | parquet | xlsx (default: from the file's extension)
    sheet = "Orders"                # xlsx only (default: the first sheet)
    timezone = "Asia/Shanghai"      # for times written without an offset (default UTC)
    delimiter = ","                 # csv only
    currencies = { "¥" = "JPY" }    # what a currency mark means in this source

    [where]                         # optional: only the rows (records) every condition keeps
    status = { not_in = ["unpaid", "cancelled"] }   # or { in = [...] }, { equals = "..." }

    [[events]]                      # each row makes one event per [[events]] table
    type = "order_placed"           # or { column = "status", map = { "paid" = "order_placed", ... } }
    id = "{order_id}"               # optional: the event id, from columns (and {_type}); else derived from content
    when = { column = "created", formats = ["%d/%m/%Y %H:%M"] }
    subject = { namespace = "email", column = "email" }
    # other = { namespace = "phone", column = "phone" }   # identity_linked: the second identifier
    [events.data]
    order_id = { column = "order_id", required = true }
    amount = { column = "total", kind = "amount" }        # "¥1,299.00": amount, and currency if marked
    currency = { column = "currency", default = "CNY" }   # a declared fill when the column is empty
    items = { column = "items", kind = "json" }

A field is `{column, kind, map, default, required, formats, unit, labels, separator}` or a
constant (`channel = "tmall"`). Kinds: text (default), int, number, amount, instant, gender,
country, bool, json, list. `map` rewrites raw values first (`{ "Y" = "true" }`). A missing
value is left out unless the field is `required` (the row is quarantined) or has a
`default`. An event whose subject or time is missing, or all of whose fields are, is
skipped for that row; a row that yields no event at all is quarantined, as is any row a
rule refuses — with the reason. A row `where` leaves out is counted as filtered, not refused.
"""

from persona.ingest.mapping.readers import live_records, mapped_records
from persona.ingest.mapping.rows import GROUP_HOLD_S, REFUND, columns_named, columns_needed, row_events
from persona.ingest.mapping.spec import (
    BUILT_IN,
    KINDS,
    Condition,
    EventRule,
    Field,
    SourceMapping,
    builtin_mapping,
    load_mapping,
    parse_mapping,
)

__all__ = ["BUILT_IN", "GROUP_HOLD_S", "KINDS", "REFUND", "Condition", "EventRule", "Field", "SourceMapping",
           "builtin_mapping", "columns_named", "columns_needed", "live_records", "load_mapping", "mapped_records",
           "parse_mapping", "row_events"]

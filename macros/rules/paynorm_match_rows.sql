{#- Live (not deleted) rows of `relation` with the id of the rule that matches them (NULL = none).
    Rows whose payload could not be decoded never match. -#}
{% macro paynorm_match_rows(relation, rules) -%}
select
    staged.*,
    case when staged.decode_error is null then
        {{ paynorm_match_case(rules, 'staged.payload', 'staged.payload_format', 'staged.row_data') }}
    end as mapping_id
from {{ relation }} as staged
where not staged.is_deleted
{%- endmacro %}

{#- The one definition of a payment attempt, used by every mart: an authorization, a sale, or an
    event whose rule does not say its type (a payment response of unknown kind). Verifications
    ($0 card checks) would inflate approval counts and are not attempts; captures, refunds, voids
    and chargebacks act on an earlier attempt and are counted apart. -#}
{% macro paynorm_is_attempt(event_type) -%}
    {%- if not event_type -%}
        {{ exceptions.raise_compiler_error("paynorm_is_attempt: give the event_type column or expression") }}
    {%- endif -%}
    ({{ event_type }} in ('authorization', 'sale', 'unknown'))
{%- endmacro %}

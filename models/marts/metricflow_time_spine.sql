{#- The day spine of the semantic layer (models/marts/_semantic_models.yml): MetricFlow joins
    metrics to it for metric_time. A fixed range keeps the build deterministic. -#}

select day::date as date_day
from generate_series('2015-01-01'::date, '2035-12-31'::date, interval '1 day') as day

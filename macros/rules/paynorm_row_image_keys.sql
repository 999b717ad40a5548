{#- The top-level row image keys the rules' row-side paths can read, sorted; none when a path
    could read others (see paynorm_row_image). -#}
{% macro paynorm_row_image_keys(rules) -%}
  {%- set paths = [] -%}
  {%- for r in rules -%}
    {%- if r.rule is not mapping -%}
      {{ exceptions.raise_compiler_error("paynorm_row_image_keys: rule " ~ r.id ~ " has no rule document") }}
    {%- endif -%}
    {%- do paynorm_collect_row_paths(r.rule, paths) -%}
  {%- endfor -%}
  {%- set re = modules.re -%}
  {#- tokens, left to right: a string literal, a quoted key accessor, a key accessor followed by what
      may follow a key, a root filter, any other $ or @, anything else -#}
  {%- set token -%}
"(?:[^"\\]|\\.)*"|[$@]\s*\.\s*"[^"\\]*"|[$@]\s*\.\s*[^\W\d]\w*(?=\s*(?:\Z|[.\[\])?=!<>&|+*/%,-])|\s+[A-Za-z])|\$\s*\?|[$@]|"|[^"$@]+
  {%- endset -%}
  {%- set ns = namespace(whole=false) -%}
  {%- set keys = [] -%}
  {%- for p in paths -%}
    {#- a null row_path is no path (paynorm_field_raw skips it); anything else not a string: unknown -#}
    {%- if p[0] is not none and p[0] is not string -%}{%- set ns.whole = true -%}{%- endif -%}
    {%- for tok in (re.findall(token | trim, p[0]) if p[0] is string else []) -%}
      {%- set head = tok[:1] -%}
      {%- if head == '"' -%}
        {%- if tok | length < 2 -%}{%- set ns.whole = true -%}{%- endif -%}
      {%- elif head == '$' or head == '@' -%}
        {%- set rest = tok[1:] | trim -%}
        {%- if rest[:1] == '.' -%}
          {%- set name = rest[1:] | trim -%}
          {%- if name[:1] == '"' -%}{%- set name = name[1:-1] -%}{%- endif -%}
          {%- if name not in keys -%}{%- do keys.append(name) -%}{%- endif -%}
        {%- elif rest == '?' and head == '$' and p[1] -%}
          {#- a filter on the root in a predicate: what it reads are its own @.key accessors -#}
        {%- else -%}
          {%- set ns.whole = true -%}
        {%- endif -%}
      {%- endif -%}
    {%- endfor -%}
  {%- endfor -%}
  {{ return(none if ns.whole else keys | sort) }}
{%- endmacro %}

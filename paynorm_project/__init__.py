"""paynorm's project data as a package: the dbt project, the mapping rules and their fixtures, the
prompts (symbolic links to the repository's top level, copied into the wheel at build time). Found
by consumer.resources when paynorm runs from an install rather than from a source checkout."""

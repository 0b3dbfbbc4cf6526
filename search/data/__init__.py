"""The images: decode and cache (images), the built-in synthetic set, near-duplicate grouping and the
split (duplicates), `data check` (check), and reloading a study's data from its metadata (study_data)."""

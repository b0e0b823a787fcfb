"""The feature-statistics (AdaIN) texture attack (Lee et al., Appl. Sci. 2024), a source-grid attack:
`attack` (the catalogue's `texture`), `cascade` (the method on a CT volume), `reformation` (levels 5-4),
`networks` and `weights` (the encoder/decoder pairs), `search` (the black-box search of its settings).
"""

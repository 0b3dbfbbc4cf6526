"""What leaves the search: the models a user takes away, and those models in use.

- `trial`: one trial's model, stored or retrained (refit on train+val, another image size or
  epochs, a seed), with its JSON card and its test metrics; `study` is `agesearch.export(study, ...)`.
- `selection` (greedy ensemble selection on val, Caruana et al. 2004) and `ensemble` (its members,
  retrained or stored, averaged in one Keras model).
- `formats`: the deployable files Keras writes itself (ONNX, LiteRT, SavedModel); `model_card`: the
  Markdown card for people beside the JSON one.
- `evaluate` (`agesearch evaluate`, `predict`), `faces` (find, align and crop faces in a photo) and
  `predictor` (what `agesearch.load_model` returns).

It imports the store, training and data packages, never the report (which only reads studies) nor
the loop.
"""

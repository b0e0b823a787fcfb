"""Qt-free helpers of the AdvSegAttack Slicer module.

- `supported`: which Slicer the module needs (runs before anything else, so it stays Python 3.9 code);
- `progress`: the engine's JSON-lines progress protocol, and output split into whole lines;
- `catalogue`: the engine's attack catalogue as the panel uses it: widget specifications, the user's preset and
  changed values (one JSON string in the parameter node), ``--preset`` and the changed flags;
- `engine`: command line of the child process, where the engine, its models and PythonSlicer are;
- `process`: one engine child process: launch, output, outcome, killing its process tree;
- `dependencies`: installing the engine's packages with torch and Slicer's own packages pinned;
- `scene`: case folder to MRML nodes, compare layout, difference map, node files;
- `reader`: one reader-study case in the scene under its neutral ID only.

None of them imports Qt; `scene` and `reader` import `slicer` (MRML) inside functions only, so everything here is
tested on the `slicer-core` wheel without a Slicer application.
"""

"""Qt-free helpers of the AdvSegAttack Slicer module.

- `progress`: the engine's JSON-lines progress protocol;
- `engine`: attack catalogue, command line of the child process, where the engine and PythonSlicer are;
- `scene`: case folder to MRML nodes, compare layout, difference map, export;
- `reader`: one reader-study case in the scene under its neutral ID only.

None of them imports Qt; `scene` and `reader` import `slicer` (MRML) inside functions only, so everything here is
tested on the `slicer-core` wheel without a Slicer application.
"""

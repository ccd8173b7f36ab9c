"""The peer bench (``python -m bench.peer_bench``): gigaseg against the tiled-inference tools users pick.

Read forward: :mod:`.rows` names the rows, :mod:`.fixtures` makes the scenes and
weights, :mod:`.measure` runs each row in a child process and watches its time and
memory, :mod:`.child` is that child's side (:mod:`.probes` for what it measures of
itself, :mod:`.end_to_end` for gigaseg's file-to-file rows, :mod:`.in_memory` for the
rows that get the image as an array, with :mod:`.chips`, :mod:`.monai_window` and
:mod:`.nnunet` for the peers' own tiling), :mod:`.seams` scores each row against the
untiled pass, :mod:`.session` runs the whole plan and :mod:`.report` writes the tables.
"""

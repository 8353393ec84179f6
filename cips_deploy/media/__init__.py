"""What renders become: seed files and provenance (:mod:`.render_files`, :mod:`.provenance`),
animations (:mod:`.video`) and the viewer pages (:mod:`.viewers`). numpy and Pillow only."""

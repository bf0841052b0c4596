"""The six HER2match frameworks, one module each, behind one registry.

    from her2core.models import registry
    cls = registry.get("pyramid_pix2pix")
    model = cls(cls.preset("tiny"))
"""

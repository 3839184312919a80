"""sources/nbia"""

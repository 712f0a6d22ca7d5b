"""tradetrace.store"""

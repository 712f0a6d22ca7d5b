"""tradetrace.engine"""

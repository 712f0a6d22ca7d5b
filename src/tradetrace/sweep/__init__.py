"""tradetrace.sweep"""

"""Verification metrics and plots: the trainer's ground floor.

Plain numpy (and matplotlib for the figures) over scores and labels; it imports no other trainer
package, so training, the household and evaluation can all measure alike without importing each
other.
"""

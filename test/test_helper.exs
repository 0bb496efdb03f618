# GPU tests run only where a GPU is visible.
ExUnit.start(exclude: [:gpu])
